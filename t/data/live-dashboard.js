// Drives conf.example/live-dashboard/ in Debian's headless Chromium with
// puppeteer-core (t/185-live-dashboard.t). Line protocol on stdout/stdin:
//   prints "READY" once the page is live, then "BAR metric used limit class"
//   whenever asked with "bar METRIC" and "ALERTS n text" with "alerts";
//   "shot FILE" saves a screenshot; "quit" ends.
const puppeteer = require('puppeteer-core');
const readline = require('readline');

const [url, key, chrome] = process.argv.slice(2);

(async () => {
  const browser = await puppeteer.launch({
    executablePath: chrome,
    headless: 'new',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage();
  await page.goto(url);
  await page.type('#key', key);
  await page.click('button[type=submit]');
  await page.waitForFunction(
    () => document.getElementById('state').textContent === 'Live.'
          && document.querySelector('.metric'), { timeout: 10000 });
  console.log('READY');

  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, arg] = line.split(' ');
    if (cmd === 'bar') {
      const r = await page.evaluate((m) => {
        const el = document.getElementById('m-' + m);
        if (!el) return 'none';
        return el.dataset.used + ' ' + el.dataset.limit + ' '
               + el.querySelector('.fill').className.replace(' ', '-')
               + ' ' + el.querySelector('.fill').style.width;
      }, arg);
      console.log('BAR ' + arg + ' ' + r);
    } else if (cmd === 'alerts') {
      const r = await page.evaluate(() => Array.from(
        document.querySelectorAll('#alerts li')).map((l) => l.className));
      console.log('ALERTS ' + r.length + ' ' + r.join(','));
    } else if (cmd === 'shot') {
      await page.screenshot({ path: arg });
      console.log('SHOT');
    } else if (cmd === 'quit') {
      break;
    }
  }
  await browser.close();
  process.exit(0);
})().catch((e) => { console.log('ERROR ' + e.message); process.exit(1); });
