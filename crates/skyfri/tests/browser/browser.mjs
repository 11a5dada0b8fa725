// What the browser tests share: their settings from the environment, checks, and headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core).
//
// Environment: PLAYWRIGHT_CORE (the playwright-core folder), CHROMIUM (the browser).
import { createRequire } from 'node:module';

export const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

export function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

export async function launch() {
  const require = createRequire(import.meta.url);
  const { chromium } = require(env('PLAYWRIGHT_CORE'));
  return chromium.launch({
    executablePath: env('CHROMIUM'),
    headless: true,
    // As root (the test machine) Chromium's own sandbox cannot start.
    args: ['--no-sandbox'],
  });
}

// Logs in to the dashboard at `ui` as the admin, in `page`.
export async function logIn(page, ui) {
  await page.goto(`${ui}/ui`);
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('input[name=password]', env('SKYFRI_PASSWORD'));
  await page.click('#login-form button[type=submit]');
  await page.locator('#who', { hasText: 'admin' }).waitFor();
}
