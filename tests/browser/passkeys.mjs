// Drives assets/ui/passkey.js in Debian's chromium with a virtual WebAuthn authenticator
// (Chrome DevTools Protocol), against the test server of tests/passkeys_browser.rs, which
// runs the real ceremonies of src/authn/passkey.rs. Usage: node passkeys.mjs BASE_URL (or
// TOLLGATE_PASSKEYS_URL=BASE_URL).
// Prints one line per step; exits non-zero on the first failure.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const base = process.argv[2] || process.env.TOLLGATE_PASSKEYS_URL;
if (!base) {
  console.error("usage: node passkeys.mjs BASE_URL");
  process.exit(2);
}
const executablePath = process.env.TOLLGATE_CHROMIUM || "/usr/bin/chromium";
const userDataDir = mkdtempSync(join(tmpdir(), "tollgate-passkeys-"));

function check(condition, what) {
  if (!condition) {
    throw new Error(`failed: ${what}`);
  }
  console.log(`ok: ${what}`);
}

async function statusAfterClick(page, selector) {
  await page.click(selector);
  await page.waitForSelector("#status[data-state='error']", { timeout: 30_000 });
  return page.textContent("#status");
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30_000);
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

  // Base64url helpers round-trip every byte value.
  await page.goto(`${base}/`);
  const roundTrip = await page.evaluate(() => {
    const bytes = new Uint8Array(256).map((_, i) => i);
    const text = window.tollgatePasskey.toBase64url(bytes.buffer);
    const back = new Uint8Array(window.tollgatePasskey.fromBase64url(text));
    return { text, same: back.length === 256 && back.every((b, i) => b === i) };
  });
  check(roundTrip.same && !/[+/=]/.test(roundTrip.text), "base64url helpers round-trip 256 byte values");

  // Register: the answer names no redirect, so data-redirect is followed.
  await page.fill("#passkey-name", "Virtual authenticator");
  await Promise.all([page.waitForURL(/\/done\?after=register$/), page.click("#register")]);
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  check(credentials.length === 1, "the authenticator holds one credential");
  check(credentials[0].isResidentCredential, "a discoverable credential (residentKey preferred)");
  check(credentials[0].rpId === "localhost", "for relying party id localhost");

  // Registering the same authenticator again: excluded, and said so.
  await page.goto(`${base}/`);
  const again = await statusAfterClick(page, "#register");
  check(/already holds a passkey/.test(again), `a second registration is refused: "${again}"`);

  // Sign in without a username (discoverable credential); the answer's redirect is followed.
  await page.goto(`${base}/`);
  await Promise.all([page.waitForURL(/\/done\?user=ann$/), page.click("#sign-in")]);
  check(true, "signed in without a username");

  // Sign in with a username (allowCredentials lists the passkey).
  await page.goto(`${base}/`);
  await page.fill("#username", "ann");
  await Promise.all([page.waitForURL(/\/done\?user=ann$/), page.click("#sign-in")]);
  check(true, "signed in with a username");

  // The server's refusal is shown as it says it (a wrong CSRF token).
  await page.goto(`${base}/`);
  const csrf = await statusAfterClick(page, "#sign-in-bad-csrf");
  check(csrf === "CSRF token missing or wrong", `a server error is shown: "${csrf}"`);

  // The person cancels (the authenticator answers nothing until the ceremony times out).
  await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: false });
  await cdp.send("WebAuthn.setAutomaticPresenceSimulation", { authenticatorId, enabled: false });
  await page.goto(`${base}/`);
  const cancelled = await statusAfterClick(page, "#sign-in");
  check(/cancelled or timed out/.test(cancelled), `a cancelled ceremony is explained: "${cancelled}"`);

  // A browser without WebAuthn.
  const bare = await context.newPage();
  await bare.addInitScript(() => {
    delete window.PublicKeyCredential;
  });
  await bare.goto(`${base}/`);
  const unsupported = await statusAfterClick(bare, "#sign-in");
  check(/does not support passkeys/.test(unsupported), `no WebAuthn is explained: "${unsupported}"`);
  if (process.env.TOLLGATE_SCREENSHOTS) {
    await bare.screenshot({ path: join(process.env.TOLLGATE_SCREENSHOTS, "passkeys-unsupported.png") });
  }
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log("every passkey browser check passed");
