// The web UI in a real browser: Debian's chromium, driven by playwright-core, against a
// tollgate and Envoy that tests/ui_browser.rs starts (and passes here in the environment).
//
// Scenario: sign in with a password; create a key, see it once, reload and see it is gone;
// call a model through Envoy with it (200), revoke it in the UI, call again (401); the
// pages without JavaScript; a user's view and a viewer's view (no write controls); a forged
// post without the CSRF token, and one from another origin, refused; the UI behind a path
// prefix (an Envoy that mounts it at /gateway); a team made and a member added, the model
// call's usage as an SVG chart and a CSV download, a narrow screen, the budgets, alerts,
// audit and user pages, and what a user and a viewer see of them. A screenshot of each page goes to
// $TOLLGATE_SCREENSHOTS. Exits non-zero on the first failure.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { launch, runScenario } from "./chromium.mjs";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/ui_browser.rs sets it)`);
  return value;
}

const UI = env("TOLLGATE_UI_URL"); // http://127.0.0.1:PORT/ui
const PREFIXED = env("TOLLGATE_UI_PREFIXED_URL"); // http://127.0.0.1:PORT/gateway/ui
const LLM = env("TOLLGATE_LLM_URL"); // Envoy in front of the model
const SHOTS = env("TOLLGATE_SCREENSHOTS");
const PASSWORD = env("TOLLGATE_PASSWORD");
const ADMIN = env("TOLLGATE_ADMIN");
const USER = env("TOLLGATE_USER");
const VIEWER = env("TOLLGATE_VIEWER");
// Every console error of every page (a Content-Security-Policy violation is one).
const consoleErrors = [];

/** A fresh browser and its page, whose console errors are collected. */
async function browser(name, options = {}) {
  const { context, page } = await launch(options);
  context.setDefaultTimeout(15_000);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(`${name}: ${message.text()}`);
  });
  page.on("pageerror", (error) => consoleErrors.push(`${name}: ${error.message}`));
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  console.log(`screenshot ${name}.png`);
}

function step(text) {
  console.log(`- ${text}`);
}

/** Signs in with a password at `base` (`…/ui`), from the start page. */
async function signIn(page, base, username) {
  await page.goto(`${base}/`);
  assert.match(page.url(), /\/login$/, "the start page sends to sign-in");
  await page.getByLabel("Username or email").fill(username);
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in", exact: true }).click();
  await page.waitForURL(/\/keys$/);
}

async function callModel(key) {
  const response = await fetch(`${LLM}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hello" }] }),
  });
  return response.status;
}

/** The names in the keys table, in order. */
async function keyNames(page) {
  return page.locator("tbody td:first-child a").allInnerTexts();
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });

  step("sign in with a password");
  const admin = await browser("admin");
  let page = admin.page;
  await page.goto(`${UI}/`);
  await page.waitForURL(/\/login$/);
  await shot(page, "login");
  await signIn(page, UI, ADMIN);
  await assert.doesNotReject(page.getByText(`Signed in as ${ADMIN}`).waitFor());
  // The stylesheet loaded under the policy: the header has its colour.
  const header = await page.locator("header.top").evaluate((el) => getComputedStyle(el).backgroundColor);
  assert.equal(header, "rgb(35, 64, 142)", "tollgate.css applies");
  await shot(page, "keys");

  step("create a key; see its secret once");
  await page.getByRole("link", { name: "New key" }).click();
  await page.waitForURL(/\/keys\/new$/);
  await shot(page, "key-new");
  await page.getByLabel("Name", { exact: true }).fill("browser-key");
  await page.getByLabel(/^Requests per minute/).fill("100");
  await page.getByLabel(/^Budget in USD/).fill("5");
  await page.getByRole("button", { name: "Create the key" }).click();
  await page.waitForURL(/\/keys\/[0-9a-f-]+\/secret$/);
  const keyUrl = page.url().replace(/\/secret$/, "");
  const secret = (await page.locator("#secret").innerText()).trim();
  assert.match(secret, /^sk-tg-[0-9A-Za-z]{49}$/);
  assert.ok(!page.url().includes(secret), "never in the URL");
  // The copy button is the one thing that needs JavaScript: shown, and it copies.
  await admin.context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(UI).origin });
  const copy = page.getByRole("button", { name: "Copy" });
  await copy.waitFor({ state: "visible" });
  await shot(page, "key-secret");
  await copy.click();
  await page.getByRole("button", { name: "Copied" }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);

  step("reload: the secret is gone");
  const reloaded = await page.reload();
  assert.equal(reloaded.status(), 410);
  assert.ok(!(await page.content()).includes(secret), "not shown again");
  await page.getByRole("heading", { name: "The secret is gone" }).waitFor();
  await shot(page, "key-secret-gone");
  await page.goto(`${UI}/keys`);
  assert.ok(!(await page.content()).includes(secret));

  step("call a model through Envoy with it: 200");
  assert.equal(await callModel(secret), 200);

  step("revoke it in the UI (the browser confirms): the next call is 401");
  await page.goto(keyUrl);
  await shot(page, "key");
  page.once("dialog", (dialog) => {
    assert.match(dialog.message(), /Revoke the key browser-key\?/);
    dialog.accept();
  });
  await page.getByRole("button", { name: "Revoke" }).click();
  await page.waitForURL(/done=revoked/);
  await page.getByText("The key is revoked").waitFor();
  await shot(page, "key-revoked");
  assert.equal(await callModel(secret), 401);

  step("a forged post without the CSRF token is refused");
  await page.goto(`${UI}/keys`);
  const bobRow = page.locator("tr", { hasText: "bob-ci" });
  const bobKey = await bobRow.locator("a").first().getAttribute("href");
  await page.goto(new URL(bobKey, UI).href);
  await page.evaluate(() => document.querySelectorAll("input[name=csrf_token]").forEach((e) => e.remove()));
  const [forged] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/block")),
    page.getByRole("button", { name: "Block" }).click(),
  ]);
  assert.equal(forged.status(), 403);
  await page.getByText("security token is missing").waitFor();
  await shot(page, "error-csrf");
  await page.goto(new URL(bobKey, UI).href);
  assert.equal(await page.locator(".heading .status").innerText(), "active", "nothing changed");

  step("a post from a page of another origin is refused, though the browser sends the cookie");
  const attacker = http.createServer((_, res) => {
    res.setHeader("content-type", "text/html");
    res.end(
      `<!doctype html><title>Prize</title><form method="post" action="${new URL(bobKey, UI).href}/block">` +
        `<input type="hidden" name="csrf_token" value="guessed"><button>Claim the prize</button></form>`,
    );
  });
  await new Promise((resolve) => attacker.listen(0, "127.0.0.1", resolve));
  await page.goto(`http://127.0.0.1:${attacker.address().port}/`);
  const [crossSite] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/block")),
    page.getByRole("button", { name: "Claim the prize" }).click(),
  ]);
  assert.equal(crossSite.status(), 403);
  await page.getByText("sent from another site").waitFor();
  await shot(page, "error-cross-origin");
  attacker.close();
  await page.goto(new URL(bobKey, UI).href);
  assert.equal(await page.locator(".heading .status").innerText(), "active", "nothing changed");

  step("a narrow screen");
  await page.goto(`${UI}/keys`);
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "keys-narrow");
  await page.setViewportSize({ width: 1280, height: 860 });

  step("without JavaScript: create, see the secret, revoke after the server's confirmation");
  const plain = await browser("no-js", { javaScriptEnabled: false });
  await signIn(plain.page, UI, ADMIN);
  await plain.page.goto(`${UI}/keys/new`);
  await plain.page.getByLabel("Name", { exact: true }).fill("no-script-key");
  await plain.page.getByRole("button", { name: "Create the key" }).click();
  await plain.page.waitForURL(/\/secret$/);
  const plainSecret = (await plain.page.locator("#secret").innerText()).trim();
  assert.match(plainSecret, /^sk-tg-/);
  assert.equal(await plain.page.getByRole("button", { name: "Copy" }).isVisible(), false, "no copy button without a script");
  await plain.page.getByRole("link", { name: "Key no-script-key" }).click();
  await plain.page.getByRole("button", { name: "Revoke" }).click();
  await plain.page.getByRole("heading", { name: "Revoke the key no-script-key?" }).waitFor();
  await shot(plain.page, "key-revoke-confirm");
  await plain.page.getByRole("button", { name: "Revoke" }).click();
  await plain.page.waitForURL(/done=revoked/);
  assert.equal(await callModel(plainSecret), 401);

  step("a user's view: their own keys only");
  const user = await browser("user");
  await signIn(user.page, UI, USER);
  const userKeys = await keyNames(user.page);
  assert.deepEqual(userKeys, ["uma-laptop"]);
  await user.page.getByRole("link", { name: "New key" }).waitFor();
  assert.equal(await user.page.getByLabel(/^Owner/).count(), 0, "no owner filter");
  await shot(user.page, "keys-user");
  await user.page.getByRole("link", { name: "Profile" }).click();
  await user.page.getByRole("heading", { name: "Profile" }).waitFor();
  await shot(user.page, "profile");

  step("a viewer's view: every key, no write controls");
  const viewer = await browser("viewer");
  await signIn(viewer.page, UI, VIEWER);
  const seen = await keyNames(viewer.page);
  assert.ok(seen.includes("uma-laptop") && seen.includes("bob-ci"), `${seen}`);
  assert.equal(await viewer.page.getByRole("link", { name: "New key" }).count(), 0);
  for (const name of [/^Block/, /^Unblock/, /^Revoke/]) {
    assert.equal(await viewer.page.getByRole("button", { name }).count(), 0, `${name}`);
  }
  await shot(viewer.page, "keys-viewer");
  await viewer.page.getByRole("link", { name: "bob-ci" }).click();
  await viewer.page.getByRole("heading", { name: "Details" }).waitFor();
  assert.equal(await viewer.page.getByRole("button").filter({ hasText: /Rotate|Block|Revoke/ }).count(), 0);
  await shot(viewer.page, "key-viewer");

  step("behind a path prefix (Envoy mounts the UI at /gateway)");
  const proxied = await browser("prefix");
  await signIn(proxied.page, PREFIXED, ADMIN);
  assert.match(proxied.page.url(), /\/gateway\/ui\/keys$/);
  const unprefixed = await proxied.page.locator('a[href^="/ui"], form[action^="/ui"]').count();
  assert.equal(unprefixed, 0, "every link and form carries the prefix");
  const cookies = await proxied.context.cookies();
  const session = cookies.find((c) => c.name === "tollgate_ui");
  assert.equal(session?.path, "/gateway/ui");
  assert.equal(session?.httpOnly, true);
  assert.equal(session?.sameSite, "Lax");
  await proxied.page.getByRole("link", { name: "uma-laptop" }).click();
  await proxied.page.waitForURL(/\/gateway\/ui\/keys\/[0-9a-f-]+$/);
  await shot(proxied.page, "key-prefix");
  await proxied.page.getByRole("button", { name: "Sign out" }).click();
  await proxied.page.waitForURL(/\/gateway\/ui\/login\?ended=signed_out$/);
  await proxied.page.getByText("You have signed out.").waitFor();
  await proxied.page.goto(`${PREFIXED}/keys`);
  await proxied.page.waitForURL(/\/gateway\/ui\/login\?next=%2Fkeys$/);

  step("teams: create one, add a member by username");
  await page.goto(`${UI}/teams`);
  await page.getByLabel("Name", { exact: true }).fill("Browser team");
  await page.getByLabel(/^Budget in USD/).fill("3");
  await page.getByRole("button", { name: "Create the team" }).click();
  await page.waitForURL(/\/teams\/[0-9a-f-]+\?done=created$/);
  const teamUrl = page.url().replace(/\?.*$/, "");
  await page.getByLabel(/^User/).fill(USER);
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await page.waitForURL(/done=member_added/);
  await page.locator("#members ~ .table-wrap tr", { hasText: USER }).waitFor();
  await shot(page, "team");

  step("usage: the model call above, as an SVG chart, a table and a CSV");
  // The call's record is written by the usage queue within a batch interval.
  let table = "";
  for (let i = 0; i < 40 && !table.includes("gpt-4o-mini"); i++) {
    await page.goto(`${UI}/usage?group=model&metric=requests`);
    table = await page.locator("table").innerText();
    if (!table.includes("gpt-4o-mini")) await page.waitForTimeout(250);
  }
  assert.ok(table.includes("gpt-4o-mini"), table);
  const chart = page.getByRole("img", { name: /chart/ });
  await chart.waitFor();
  const bar = page.locator("svg.bars rect.bar").first();
  assert.ok(Number(await bar.getAttribute("width")) > 0, "a bar is drawn");
  assert.equal(await bar.evaluate((el) => getComputedStyle(el).fill), "rgb(35, 64, 142)", "coloured by the stylesheet");
  await shot(page, "usage");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("link", { name: "Download CSV" }).click(),
  ]);
  assert.match(download.suggestedFilename(), /^tollgate-usage-by-model-\d{4}-\d{2}-01-to-now\.csv$/);
  const csv = readFileSync(await download.path(), "utf8");
  assert.match(csv, /^group,requests,input_tokens,output_tokens,cost_usd\r\ngpt-4o-mini,/);
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page fits a narrow screen (${overflow}px too wide)`);
  await shot(page, "usage-narrow");
  await page.setViewportSize({ width: 1280, height: 860 });

  step("budgets, alerts, audit, users");
  await page.goto(`${UI}/budgets`);
  await page.locator("tr", { hasText: "Browser team" }).locator("meter").waitFor();
  await shot(page, "budgets");
  await page.goto(`${UI}/alerts`);
  await page.getByRole("heading", { name: "Budget alerts" }).waitFor();
  await shot(page, "alerts");
  await page.goto(`${UI}/audit?action=team.member.add`);
  await page.locator("tbody tr", { hasText: "team.member.add" }).first().waitFor();
  await shot(page, "audit");
  await page.goto(`${UI}/users`);
  await page.getByRole("link", { name: USER, exact: true }).click();
  await page.getByRole("link", { name: "Browser team" }).waitFor();
  await shot(page, "user");

  step("a user's pages: their usage and teams, no admin pages in the navigation");
  await user.page.goto(`${UI}/usage`);
  await user.page.getByRole("heading", { name: "Your usage" }).waitFor();
  const userNav = await user.page.locator("nav[aria-label=Main] a").allInnerTexts();
  assert.deepEqual(userNav, ["Keys", "Teams", "Usage", "Budgets", "Profile"]);
  await user.page.goto(teamUrl);
  assert.equal(await user.page.getByRole("button", { name: /Remove|Add|Save|Delete/ }).count(), 0);
  await shot(user.page, "team-user");
  const refusedAudit = await user.page.goto(`${UI}/audit`);
  assert.equal(refusedAudit.status(), 403);

  step("a viewer's teams: no write controls");
  await viewer.page.goto(teamUrl);
  await viewer.page.getByRole("heading", { name: "Members" }).waitFor();
  assert.equal(await viewer.page.getByRole("button", { name: /Remove|Add|Save|Delete|Create/ }).count(), 0);
  await shot(viewer.page, "team-viewer");

  // Only the refusals this scenario provoked may show in a console (as failed loads).
  const unexpected = consoleErrors.filter((e) => !/status of (403|410)/.test(e));
  assert.deepEqual(unexpected, [], "no console errors (no Content-Security-Policy violation)");
  console.log("the web UI works in chromium");
}

await runScenario(main);
