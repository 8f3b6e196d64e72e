// Opens the VisionOps dashboard in Debian's chromium (playwright-core, no downloaded browser),
// waits until it rendered the status data, and prints one JSON line describing every chart:
// {"state", "charts": {name: {points, marks}}, "requests": [urls], "errors": [...]}.
// Saves a full-page screenshot. Usage: node dashboard.mjs <dashboard url> <screenshot path>
import { chromium } from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node dashboard.mjs <url> <screenshot.png>");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const out = { requests: [], errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("request", (r) => out.requests.push(r.url()));
  page.on("pageerror", (e) => out.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") out.errors.push(m.text()); });
  await page.goto(url, { waitUntil: "load", timeout: 60_000 });
  await page.waitForSelector("body[data-rendered]", { timeout: 90_000 });
  out.state = await page.getAttribute("body", "data-state");
  out.charts = await page.$$eval("svg[data-chart]", (svgs) => Object.fromEntries(svgs.map((s) => [
    s.dataset.chart,
    { points: Number(s.dataset.points),
      marks: s.querySelectorAll("circle[data-value], rect[data-value]").length,
      deployments: [...s.querySelectorAll("line[data-marker]")].map((l) => l.dataset.marker) },
  ])));
  out.banner = await page.$eval("#banner", (b) => getComputedStyle(b).backgroundColor);
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (err) {
  out.errors.push(String(err));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
process.exit(out.errors.length ? 1 : 0);
