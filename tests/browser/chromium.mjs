// What the browser scripts share: Debian's chromium (never a downloaded browser), headless,
// with a profile of its own that is deleted at the end, and chromium's virtual WebAuthn
// authenticator.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const CHROMIUM = process.env.TOLLGATE_CHROMIUM || "/usr/bin/chromium";

// Touching nothing outside the test: without the background-networking flags, chromium
// tries hosts this machine cannot reach.
export const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const profiles = [];
const contexts = [];

/** A fresh browser (its own --user-data-dir) and its first page. */
export async function launch(options = {}) {
  const dir = mkdtempSync(join(tmpdir(), "tollgate-browser-"));
  profiles.push(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 860 },
    ...options,
  });
  contexts.push(context);
  const page = context.pages()[0] ?? (await context.newPage());
  return { context, page };
}

/** Closes every browser `launch` opened and deletes their profiles. */
export async function closeAll() {
  for (const context of contexts) await context.close().catch(() => {});
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
}

/**
 * Chromium's virtual authenticator for `page` (WebAuthn over the DevTools protocol): a
 * platform authenticator with discoverable credentials that verifies the user and sees
 * them present. Answers the CDP session and the authenticator's id.
 */
export async function virtualAuthenticator(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return { cdp, authenticatorId };
}

/** Runs `main`, closes the browsers, and exits 0, or 1 after printing its error. */
export async function runScenario(main) {
  let failed = false;
  try {
    await main();
  } catch (error) {
    failed = true;
    console.error(error);
  } finally {
    await closeAll();
  }
  process.exit(failed ? 1 : 0);
}
