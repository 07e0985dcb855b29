// Drives headless Chromium (Debian's) with puppeteer-core: opens the page the test serves
// and prints window.result as JSON on stdout. Usage:
//   node browser.mjs PAGE_URL USER_DATA_DIR
// Run with NODE_PATH / cwd such that `puppeteer-core` resolves (setup.sh's install).
import puppeteer from "puppeteer-core";

const [page_url, user_data_dir] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: user_data_dir,
  args: [
    "--no-sandbox", // running as root
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    `--user-data-dir=${user_data_dir}`,
  ],
});
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
  await page.goto(page_url);
  await page.waitForFunction("window.result !== undefined", { timeout: 60000 });
  const result = await page.evaluate("window.result");
  result.userAgent = await browser.userAgent();
  result.console = logs;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
