// Signing in to the web UI without a password, in a real browser: Debian's chromium, driven
// by playwright-core, against a tollgate and an OpenID Provider (npm's oidc-provider) that
// tests/ui_sign_in_browser.rs starts and passes here in the environment.
//
// Scenario: "Sign in with corp" → the provider's sign-in form → back in the UI as the
// provisioned user, whose profile offers no password change; a passkey added on the profile
// with chromium's virtual authenticator (WebAuthn over CDP); signed out, signed in again
// with the passkey alone; the passkey renamed, then deleted after the browser's
// confirmation, after which it no longer signs in. Screenshots of the sign-in page, the
// profile with its passkey and the pages after each sign-in go to $TOLLGATE_SCREENSHOTS.
// Exits non-zero on the first failure.

import assert from "node:assert/strict";
import { join } from "node:path";
import { launch, runScenario, virtualAuthenticator } from "./chromium.mjs";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/ui_sign_in_browser.rs sets it)`);
  return value;
}

const UI = env("TOLLGATE_UI_URL"); // http://localhost:PORT/ui
const ISSUER = env("TOLLGATE_ISSUER"); // the OpenID Provider
const SHOTS = env("TOLLGATE_SCREENSHOTS");
const consoleErrors = [];

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  console.log(`screenshot ${name}.png`);
}

function step(text) {
  console.log(`- ${text}`);
}

async function signedInAs(page, name) {
  const who = await page.locator(".who strong").innerText();
  assert.equal(who, name, `signed in as ${name}`);
}

async function main() {
  const { context, page } = await launch();
  context.setDefaultTimeout(20_000);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(`${message.text()} at ${message.location().url}`);
  });
  page.on("pageerror", (error) => consoleErrors.push(error.message));

  step("the sign-in page offers a password, a passkey and single sign-on");
  await page.goto(`${UI}/login`);
  await page.getByRole("button", { name: "Sign in with a passkey" }).waitFor();
  await page.getByRole("link", { name: "Sign in with corp" }).waitFor();
  await shot(page, "sign-in-choices");

  step("sign in with SSO at the OpenID Provider");
  await page.getByRole("link", { name: "Sign in with corp" }).click();
  await page.waitForURL((url) => url.href.startsWith(ISSUER));
  await page.fill("input[name=login]", "alice");
  await page.fill("input[name=password]", "password-alice");
  await Promise.all([
    page.waitForURL(`${UI}/keys`),
    page.getByRole("button", { name: "Sign in" }).click(),
  ]);
  await signedInAs(page, "alice@example.com");
  await shot(page, "sign-in-after-sso");

  step("the profile: no password to change, no passkey yet");
  await page.goto(`${UI}/profile`);
  await page.getByText("This account has no password").waitFor();
  await page.getByText("You have no passkeys yet").waitFor();
  assert.equal(await page.getByRole("button", { name: "Change the password" }).count(), 0);

  step("add a passkey with chromium's virtual authenticator");
  const { cdp, authenticatorId } = await virtualAuthenticator(context, page);
  await page.fill("#passkey-name", "Virtual key");
  await Promise.all([
    page.waitForURL(`${UI}/profile?done=passkey_added`),
    page.getByRole("button", { name: "Add a passkey" }).click(),
  ]);
  await page.getByText("The passkey is added").waitFor();
  await page.getByRole("cell", { name: "Virtual key", exact: true }).waitFor();
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.equal(credentials.length, 1, "the authenticator holds the passkey");
  assert.ok(credentials[0].isResidentCredential, "a discoverable credential");
  await shot(page, "profile-passkeys");

  step("sign out, then sign in with the passkey alone");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/login\?ended=signed_out$/);
  await Promise.all([
    page.waitForURL(`${UI}/keys`),
    page.getByRole("button", { name: "Sign in with a passkey" }).click(),
  ]);
  await signedInAs(page, "alice@example.com");
  const after = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.ok(after.credentials[0].signCount >= 1, "the authenticator signed");
  await shot(page, "sign-in-after-passkey");

  step("rename the passkey, then delete it after the browser's confirmation");
  await page.goto(`${UI}/profile`);
  await page.getByLabel("New name for Virtual key").fill("Laptop key");
  await Promise.all([
    page.waitForURL(`${UI}/profile?done=passkey_renamed`),
    page.getByRole("button", { name: "Rename" }).click(),
  ]);
  await page.getByRole("cell", { name: "Laptop key", exact: true }).waitFor();
  page.once("dialog", (dialog) => {
    assert.match(dialog.message(), /Delete the passkey Laptop key\?/);
    dialog.accept();
  });
  await Promise.all([
    page.waitForURL(`${UI}/profile?done=passkey_deleted`),
    page.getByRole("button", { name: "Delete Laptop key" }).click(),
  ]);
  await page.getByText("You have no passkeys yet").waitFor();

  step("the deleted passkey no longer signs in");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/login\?ended=signed_out$/);
  await page.getByRole("button", { name: "Sign in with a passkey" }).click();
  await page.locator("#passkey-status", { hasText: "unknown passkey" }).waitFor();
  assert.match(page.url(), /\/login/);
  await shot(page, "sign-in-passkey-refused");

  // The refused sign-in shows in the console as a failed load (401), and the provider's
  // page has no icon; nothing else may.
  const unexpected = consoleErrors.filter(
    (e) => !/status of 401/.test(e) && !e.endsWith(`at ${ISSUER}/favicon.ico`),
  );
  assert.deepEqual(unexpected, [], "no console errors (no Content-Security-Policy violation)");
  console.log("signing in with SSO and passkeys works in chromium");
}

await runScenario(main);
