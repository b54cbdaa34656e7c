// Headless Chromium for the browser tests: the system's Chromium (Debian's
// `chromium`, or SB_CHROMIUM), driven by playwright-core; nothing downloads a
// browser of its own.
import { existsSync } from 'node:fs';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];

/** The Chromium executable, or null when there is none. */
export function chromiumPath() {
  if (process.env.SB_CHROMIUM) return existsSync(process.env.SB_CHROMIUM) ? process.env.SB_CHROMIUM : null;
  return CANDIDATES.find((p) => existsSync(p)) ?? null;
}

/** Launches headless Chromium with a fresh profile. */
export async function launch() {
  const { chromium } = await import('playwright-core');
  const executablePath = chromiumPath();
  if (!executablePath) throw new Error('no Chromium: apt-get install chromium, or set SB_CHROMIUM');
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox', // as root
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/**
 * Opens the chat page of `httpUrl` in a new context and logs in as `user`.
 * Browser console errors and CSP violations are collected in `page.problems`.
 */
export async function chatPage(browser, httpUrl, user, token) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') page.problems.push(m.text());
  });
  page.on('pageerror', (e) => page.problems.push(e.message));
  await page.goto(`${httpUrl}/`);
  await page.getByTestId('login-user').fill(user);
  if (token) await page.getByTestId('login-token').fill(token);
  await page.getByTestId('login-submit').click();
  return page;
}

/** Sends `text` to `peer` from the page's composer. */
export async function sendFrom(page, peer, text) {
  await page.getByTestId('peer').fill(peer);
  await page.getByTestId('text').fill(text);
  await page.getByTestId('send').click();
}
