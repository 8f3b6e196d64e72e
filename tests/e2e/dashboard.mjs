// Opens the VisionOps dashboard in Debian's chromium (playwright-core, no downloaded browser),
// waits until it rendered the status data, and prints one JSON line describing every chart:
// {"state", "charts": {name: {points, marks}}, "requests": [urls], "errors": [...], "csp",
//  "violations": [...], "probe_violations": [...]}. "violations" are the CSP violations the
// page reported while it loaded and rendered; "probe_violations" those of an inline handler
// injected afterwards, which the policy must block (proof that the listener and the policy work).
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
const out = { requests: [], errors: [], probe_console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("request", (r) => out.requests.push(r.url()));
  page.on("pageerror", (e) => out.errors.push(String(e)));
  let probing = false;  // the console error of the injected handler's refusal is expected
  page.on("console", (m) => {
    if (m.type() === "error") (probing ? out.probe_console : out.errors).push(m.text());
  });
  // Registered before any page script runs (init scripts are not subject to the page's CSP).
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(
      { directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample }));
  });
  const response = await page.goto(url, { waitUntil: "load", timeout: 60_000 });
  out.csp = response ? (await response.allHeaders())["content-security-policy"] || null : null;
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
  out.violations = await page.evaluate(() => window.__csp.splice(0));
  // What escaping would have let through if it slipped: an inline handler. The CSP must refuse
  // it (a violation event), and it must not run.
  probing = true;
  out.probe_ran = await page.evaluate(async () => {
    window.__ran = false;
    const b = document.createElement("button");
    b.setAttribute("onclick", "window.__ran = true");
    document.body.appendChild(b);
    b.click();
    b.remove();
    for (let i = 0; i < 50 && !window.__csp.length; i++) await new Promise((r) => setTimeout(r, 20));
    return window.__ran;
  });
  out.probe_violations = await page.evaluate(() => window.__csp.splice(0));
} catch (err) {
  out.errors.push(String(err));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
process.exit(out.errors.length ? 1 : 0);
