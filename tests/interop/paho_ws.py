"""Eclipse Paho (Python) over WebSocket, driven by tests/transport_interop.rs.

    paho_ws.py ws|wss PORT CLIENT_ID [CA_FILE] [--v5]

Connects to ws(s)://localhost:PORT/mqtt, subscribes to `py/CLIENT_ID/#` at QoS 2, publishes
one message at each QoS 0, 1, 2 to `py/CLIENT_ID/<qos>` (a TCP client of the test also
subscribes to `py/#`), waits for its own three, and prints them as JSON on stdout. Exit 0
on success; anything else fails the test.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt

scheme, port, client_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rest = sys.argv[4:]
v5 = "--v5" in rest
ca = next((a for a in rest if not a.startswith("--")), None)

got = []
done = threading.Event()
subscribed = threading.Event()
protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                     transport="websockets", protocol=protocol)
client.ws_set_options(path="/mqtt")
if scheme == "wss":
    client.tls_set(ca_certs=ca)


def on_connect(c, userdata, flags, reason, props):
    if reason != 0:
        print(f"CONNACK {reason}", file=sys.stderr)
        sys.exit(1)
    c.subscribe(f"py/{client_id}/#", qos=2)


def on_subscribe(c, userdata, mid, reasons, props):
    subscribed.set()


def on_message(c, userdata, msg):
    got.append({"topic": msg.topic, "payload": msg.payload.decode(), "qos": msg.qos})
    if len(got) == 3:
        done.set()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect("localhost", port, keepalive=30)
client.loop_start()
if not subscribed.wait(10):
    sys.exit("no SUBACK within 10 s")
for qos in (0, 1, 2):
    client.publish(f"py/{client_id}/{qos}", f"{scheme} {qos}", qos=qos).wait_for_publish(10)
if not done.wait(10):
    sys.exit(f"received only {got}")
client.disconnect()
client.loop_stop()
print(json.dumps(sorted(got, key=lambda m: m["qos"])))
