// A function's page against the dashboard, in headless Chromium, as
// crates/skyfri/tests/dashboard.rs runs it against a real skyfri: the admin logs in to the
// dashboard, then, in the same browser, opens the page the `dash-attack` function serves on
// the gateway's port. Its script tries (a) to read the dashboard's session and CSRF token,
// (b) to create an admin token through the dashboard's API, with the token read and blind
// without it, and (c) to plant a session cookie with its own answer. All must fail: nothing
// read, no token created (as /system/tokens says), the admin's session cookie untouched and
// still good.
//
// Environment: SKYFRI_URL (the gateway), SKYFRI_UI_URL (the dashboard), SKYFRI_PASSWORD,
// PLAYWRIGHT_CORE, CHROMIUM.
import { check, env, launch, logIn } from './browser.mjs';

const base = env('SKYFRI_URL');
const ui = env('SKYFRI_UI_URL');
const step = what => console.log(`attack: ${what}`);

const browser = await launch();
try {
  const context = await browser.newContext();
  const dashboard = await context.newPage();
  dashboard.setDefaultTimeout(20000);
  await logIn(dashboard, ui);
  const cookie = (await context.cookies()).find(c => c.name === 'skyfri_session');
  check(cookie, 'the login set the session cookie');
  step(`admin logged in to the dashboard at ${ui}`);

  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(`${base}/function/dash-attack?ui=${encodeURIComponent(ui)}`);
  const result = page.locator('#result[data-done=yes]');
  await result.waitFor();
  const out = JSON.parse(await result.textContent());
  step(`the function's page at ${base} tried: ${JSON.stringify(out)}`);

  check(out.session.blocked || out.session.status !== 200,
    `(a) the function's page read the dashboard's session: ${JSON.stringify(out.session)}`);
  check(out.create.blocked || out.create.status !== 200,
    `(b) the function's page created a token through the dashboard: ${JSON.stringify(out.create)}`);
  const auth = 'Basic ' + Buffer.from(`admin:${env('SKYFRI_PASSWORD')}`).toString('base64');
  const tokens = await (await fetch(`${base}/system/tokens`, { headers: { Authorization: auth } })).json();
  const made = tokens.filter(t => t.name.startsWith('attack-')).map(t => t.name);
  check(made.length === 0, `no token was created, but /system/tokens lists ${made.join(', ')}`);
  step('(a) session not read, (b) no token created');

  check(out.plant.status === 200, `(c) the planting call answered: ${JSON.stringify(out.plant)}`);
  const after = (await context.cookies()).filter(c => c.name === 'skyfri_session');
  check(after.length === 1 && after[0].value === cookie.value,
    `(c) the admin's session cookie is untouched: ${JSON.stringify(after)}`);
  const who = await dashboard.evaluate(async () => {
    const r = await fetch('/ui/session');
    return r.ok ? (await r.json()).who : `HTTP ${r.status}`;
  });
  check(who === 'admin', `the dashboard's session still works (${who})`);
  step('(c) no cookie planted; the admin is still logged in');
  console.log('attack: all checks passed');
} finally {
  await browser.close();
}
