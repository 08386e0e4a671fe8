// A tour of the web UI with three weeks of usage in it, as an admin, in Debian's chromium
// (tests/ui_tour.rs seeds the tollgate and passes what it seeded in the environment).
// Checks that each page shows what was put in, and saves the screenshots the README shows
// (tour-*.png in $TOLLGATE_SCREENSHOTS). Exits non-zero on the first failure.

import assert from "node:assert/strict";
import { join } from "node:path";
import { launch, runScenario } from "./chromium.mjs";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/ui_tour.rs sets it)`);
  return value;
}

const UI = env("TOLLGATE_UI_URL");
const PASSWORD = env("TOLLGATE_PASSWORD");
const SHOTS = env("TOLLGATE_SCREENSHOTS");
const SINCE = env("TOLLGATE_SINCE");
const DAYS = Number(env("TOLLGATE_DAYS"));
const KEYS = Number(env("TOLLGATE_KEYS")); // not revoked
const REQUESTS = Number(env("TOLLGATE_REQUESTS"));

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `tour-${name}.png`), fullPage: true });
  console.log(`screenshot tour-${name}.png`);
}

await runScenario(async () => {
  const { context, page } = await launch({ viewport: { width: 1280, height: 800 } });
  context.setDefaultTimeout(20_000);
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));

  await page.goto(`${UI}/login`);
  await page.getByLabel("Username or email").fill("ada");
  await page.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await Promise.all([page.waitForURL(`${UI}/keys`), page.getByRole("button", { name: "Sign in", exact: true }).click()]);

  // Every key but the revoked one, the blocked one marked.
  const rows = page.locator("main table tbody tr");
  assert.equal(await rows.count(), KEYS, "every key that is not revoked");
  assert.equal(await page.locator("main .status.blocked").count(), 1, "one blocked key");
  await shot(page, "keys");

  // A bar per day, and a total of every request.
  await page.goto(`${UI}/usage?since=${SINCE}&group=day&metric=cost`);
  const days = page.locator("main table tbody tr");
  assert.equal(await days.count(), DAYS, "a row per day");
  const total = await page.locator("main table tfoot td").first().innerText();
  assert.equal(Number(total.replace(/[^0-9]/g, "")), REQUESTS, "every request counted");
  await shot(page, "usage-by-day");

  await page.goto(`${UI}/usage?since=${SINCE}&group=model&metric=cost`);
  assert.equal(await page.locator("main table tbody tr").count(), 4, "four models");
  await shot(page, "usage-by-model");

  // The team budgets, with spend against them.
  await page.goto(`${UI}/budgets`);
  for (const team of ["Platform", "Research", "Support"]) {
    await page.getByRole("rowheader", { name: team, exact: true }).waitFor();
  }
  await shot(page, "budgets");

  await page.goto(`${UI}/teams`);
  await page.getByRole("link", { name: "Platform" }).click();
  await page.getByRole("heading", { name: "Members" }).waitFor();
  await shot(page, "team");

  assert.deepEqual(errors, [], "no console errors");
  console.log("the tour of the web UI passed");
});
