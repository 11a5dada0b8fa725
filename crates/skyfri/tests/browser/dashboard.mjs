// Drives the dashboard in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core, as crates/skyfri/tests/dashboard.rs runs it against a real skyfri:
// a wrong password is refused, the right one logs in, the function is listed with its
// charts, the invoke form calls it and shows its answer, its logs show (and the live tail
// follows a new call), the secret's name shows and its value does not, the session cookie
// is HttpOnly and SameSite=Strict, nothing is kept in web storage, an API call without the
// CSRF header is refused, and logging out ends the session. The dashboard has a port of its
// own; the page talks to nothing else.
//
// Environment: SKYFRI_URL (the gateway), SKYFRI_UI_URL (the dashboard), SKYFRI_PASSWORD,
// FUNCTION, SECRET_NAME, SECRET_VALUE, PLAYWRIGHT_CORE (the playwright-core folder),
// CHROMIUM (the browser).
import { check, env, launch } from './browser.mjs';

const gateway = env('SKYFRI_URL');
const base = env('SKYFRI_UI_URL');
const fn = env('FUNCTION');

const step = what => console.log(`dashboard: ${what}`);

const browser = await launch();
const problems = [];
let page = null;
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 800 } });
  page = await context.newPage();
  page.setDefaultTimeout(20000);
  // HTTP errors the checks cause on purpose (the refused login, the call without CSRF
  // header) are logged as "Failed to load resource"; anything else is a problem.
  page.on('console', m => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  page.on('crash', () => problems.push('the page crashed'));
  page.on('pageerror', e => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', r => {
    // Aborting the live tail's stream on leaving the page is expected.
    if (!r.url().includes('follow=true')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('request', r => {
    if (!r.url().startsWith(base)) problems.push(`request off the dashboard: ${r.url()}`);
  });

  await page.goto(`${base}/ui`);
  await page.locator('#login').waitFor({ state: 'visible' });
  step('login page shown');

  await page.fill('input[name=password]', 'not-the-password');
  await page.click('#login-form button[type=submit]');
  await page.locator('#login-error', { hasText: 'login refused' }).waitFor();
  check(await page.locator('#view').isHidden(), 'the dashboard stays hidden after a wrong password');
  step('wrong password refused');

  await page.fill('input[name=password]', env('SKYFRI_PASSWORD'));
  await page.click('#login-form button[type=submit]');
  const row = page.locator(`#functions tr[data-function="${fn}"]`);
  await row.waitFor();
  check((await page.locator('#who').textContent()).includes('admin'), 'logged in as admin');
  step(`logged in; ${fn} listed: ${(await row.innerText()).replace(/\s+/g, ' ')}`);

  const cookies = await context.cookies();
  const session = cookies.find(c => c.name === 'skyfri_session');
  check(session && session.httpOnly && session.sameSite === 'Strict' && session.path === '/ui',
    `session cookie HttpOnly, SameSite=Strict, Path=/ui: ${JSON.stringify(session)}`);
  const stored = await page.evaluate(() => localStorage.length + sessionStorage.length);
  check(stored === 0, 'nothing in localStorage or sessionStorage');
  const noCsrf = await page.evaluate(async () => (await fetch('/ui/api/system/functions')).status);
  check(noCsrf === 403, `an API call without the CSRF header is refused (got ${noCsrf})`);
  step('session cookie HttpOnly/Strict/Path=/ui, no web storage, CSRF header required');

  await row.locator('a').click();
  await page.locator('#pane-overview svg.chart').first().waitFor();
  const charts = await page.locator('#pane-overview svg.chart').count();
  check(charts === 5, `five charts on the function's page (got ${charts})`);
  step('function page with its charts');

  await page.click('a[data-tab=invoke]');
  await page.fill('#invoke-form textarea[name=body]', 'browser');
  await page.click('#invoke-send');
  await page.locator('#invoke-status', { hasText: '200' }).waitFor();
  const answer = await page.locator('#invoke-body').textContent();
  check(answer.includes('Hello from the dashboard, browser'), `the function's answer shown: ${answer}`);
  const shownHeaders = await page.locator('#invoke-result').innerText();
  check(/x-call-id/i.test(shownHeaders), 'the answer\'s headers shown');
  step(`invoked from the form: 200, ${(await page.locator('#invoke-duration').textContent())}, "${answer.trim()}"`);

  await page.click('a[data-tab=logs]');
  await page.locator('#logs', { hasText: "called with 'browser'" }).waitFor();
  step('logs show the call');
  await page.check('#live-tail');
  await page.locator('#logs', { hasText: "called with 'browser'" }).waitFor();
  const r = await fetch(`${gateway}/function/${fn}`, { method: 'POST', body: 'live-tail-probe' });
  check(r.ok, `a direct call succeeds (${r.status})`);
  await page.locator('#logs', { hasText: "called with 'live-tail-probe'" }).waitFor();
  step('live tail shows a new call');

  await page.click('#nav a[data-view=secrets]');
  await page.locator('#secrets td', { hasText: env('SECRET_NAME') }).waitFor();
  const html = await page.content();
  check(!html.includes(env('SECRET_VALUE')), 'the secret value is not on the page');
  step('secret name shown, value not');

  await page.click('#nav a[data-view=usage]');
  await page.locator('#usage').waitFor();
  await page.click('#nav a[data-view=async]');
  await page.locator('#async-state').waitFor();
  step('usage and async pages load');

  await page.click('#logout');
  await page.locator('#login').waitFor({ state: 'visible' });
  const after = await page.evaluate(async () => (await fetch('/ui/session')).status);
  check(after === 401, `the session ends at logout (got ${after})`);
  step('logged out');

  check(problems.length === 0, `no browser errors: ${problems.join('; ')}`);
  console.log('dashboard: all checks passed');
} catch (e) {
  if (problems.length) console.error(`dashboard: browser problems: ${problems.join('; ')}`);
  if (page && !page.isClosed()) {
    const shown = await page.locator('#status').textContent().catch(() => '');
    console.error(`dashboard: at ${page.url()}, the page's error line: ${shown}`);
    const text = await page.locator('main').innerText().catch(() => '');
    console.error(`dashboard: the page shows:\n${text.slice(0, 3000)}`);
  }
  throw e;
} finally {
  await browser.close();
}
