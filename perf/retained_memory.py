#!/usr/bin/env python3
"""Broker RSS per retained message and per subscription, and what they cost together when
the retained topics and the filters share their levels (MQTT 5, no dependencies).

usage: perf/retained_memory.py PORT PID MODE N
  MODE retained:   publish N retained messages (16 B payloads) to distinct topics
                   site/{i//1000}/dev{i}/temp, then a QoS 1 fence (its PUBACK);
       subs:       N filters site/{i//1000}/dev{i}/+, 1000 per client (the default
                   max_subscriptions), retain handling 2;
       both:       the retained messages, then the filters (none is sent: retain handling 2);
       subs-exact, both-exact: the same with the topics themselves as filters.
Prints the broker's RSS growth per retained message and per subscription (VmRSS of PID,
2 s after each phase). Run it against a fresh broker, e.g.
  ringmq --in-memory --shards 1 --listen 127.0.0.1:29110 & perf/retained_memory.py 29110 $! both 100000
"""
import socket, sys, time

def varint(n):
    out = bytearray()
    while True:
        b = n % 128; n //= 128
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)

def s(x):
    b = x.encode(); return len(b).to_bytes(2, 'big') + b

def pkt(h, body): return bytes([h]) + varint(len(body)) + body

def connect(port, cid):
    c = socket.create_connection(('127.0.0.1', port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(pkt(0x10, s('MQTT') + bytes([5, 0x02, 0, 120, 0]) + s(cid)))
    read_packet(c)
    return c

def read_exact(c, n):
    buf = b''
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d: raise EOFError
        buf += d
    return buf

def read_packet(c):
    h = read_exact(c, 1)[0]
    mult, n = 1, 0
    while True:
        b = read_exact(c, 1)[0]; n += (b & 127) * mult; mult *= 128
        if not b & 128: break
    return h, read_exact(c, n)

def rss(pid):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmRSS:'): return int(line.split()[1]) * 1024

def topic(i): return f'site/{i // 1000}/dev{i}/temp'

def publish_retained(port, n):
    c = connect(port, 'retpub')
    buf = bytearray()
    for i in range(n):
        buf += pkt(0x31, s(topic(i)) + b'\x00' + b'x' * 16)
        if len(buf) > 60000: c.sendall(buf); buf = bytearray()
    # The last one at QoS 1: its PUBACK says the shard has read everything before it.
    buf += pkt(0x32, s('site/fence/x') + (1).to_bytes(2, 'big') + b'\x00' + b'y')
    c.sendall(buf)
    while read_packet(c)[0] >> 4 != 4: pass
    return c

def subscribe(port, n, exact):
    conns = []
    per = 1000
    for k in range((n + per - 1) // per):
        c = connect(port, f'sub{k}')
        pid, sent = 1, 0
        for a in range(k * per, min(n, (k + 1) * per), 50):
            body = pid.to_bytes(2, 'big') + b'\x00'
            for i in range(a, min(n, (k + 1) * per, a + 50)):
                f = topic(i) if exact else topic(i)[:-4] + '+'
                body += s(f) + bytes([0x20])
            c.sendall(pkt(0x82, body)); pid += 1; sent += 1
        got = 0
        while got < sent:
            if read_packet(c)[0] >> 4 == 9: got += 1
        conns.append(c)
    return conns

port, pid, mode, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
time.sleep(0.5)
base = rss(pid)
keep = []
exact = mode.endswith('-exact')
if mode.startswith('retained') or mode.startswith('both'):
    keep.append(publish_retained(port, n)); time.sleep(2)
mid = rss(pid)
if mode.startswith('subs') or mode.startswith('both'):
    keep += subscribe(port, n, exact); time.sleep(2)
end = rss(pid)
print(f'{mode} n={n} base={base} after_retained={mid} end={end} '
      f'retained_B_per={(mid - base) / n:.1f} subs_B_per={(end - mid) / n:.1f} total_B_per={(end - base) / n:.1f}')
