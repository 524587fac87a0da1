// Drives Ferry's web dashboard in headless Chromium, as a person would: key form (if any), jobs
// table, upload (tus) of a file as a `scan` job, the job's page while it runs (progress, an
// intermediate image result), the table's live progress, cancel through the confirmation dialog,
// the queue page's charts, keyboard navigation — and no console error, page error or failed
// request along the way.
//
// Usage: FERRY_URL=http://127.0.0.1:PORT node tests/dashboard/dashboard.mjs
//
// Environment:
//   FERRY_URL       the server's base URL (required)
//   FERRY_KEY       an API key (scopes jobs:read, jobs:write, results:read); when set the
//                   dashboard is expected to ask for it, and the test types it into the key form
//   SCAN_FILE       the file to upload (default: 2 MiB of random bytes in a temporary file)
//   SCAN_KIND       the kind to submit (default `scan`: tests/handlers/scan.py)
//   SCREENSHOT_DIR  where jobs.png, job.png, queue.png (and failure.png) go (default: a
//                   temporary folder, printed)
//   CHROMIUM        the browser (default /usr/bin/chromium; Debian's package)
//   FERRY_TOOLS_NODE_MODULES  where playwright-core is (default tools/node_modules)
//
// Prints `ok N - …` per step passed; on failure `not ok N - …` with the reason, and exits 1.
//
// playwright-core comes from tools/node_modules (pinned in tools/package.json). An ES module
// ignores NODE_PATH, so it is loaded with require() from there.
import { randomBytes } from 'node:crypto'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const nodeModules =
  process.env.FERRY_TOOLS_NODE_MODULES || path.resolve(here, '../../tools/node_modules')
const require = createRequire(import.meta.url)
const { chromium } = require(require.resolve('playwright-core', { paths: [nodeModules] }))

const base = (process.env.FERRY_URL || '').replace(/\/+$/, '')
if (!base) {
  console.error('set FERRY_URL to the server, e.g. http://127.0.0.1:8080')
  process.exit(2)
}
const key = process.env.FERRY_KEY || ''
const kind = process.env.SCAN_KIND || 'scan'
const shots = process.env.SCREENSHOT_DIR || mkdtempSync(path.join(os.tmpdir(), 'ferry-dashboard-'))
mkdirSync(shots, { recursive: true })
let scanFile = process.env.SCAN_FILE
if (!scanFile) {
  scanFile = path.join(mkdtempSync(path.join(os.tmpdir(), 'ferry-scan-')), 'scan.bin')
  writeFileSync(scanFile, randomBytes(2 << 20))
}
const PARAMS = { steps: 40, step_seconds: 0.5 } // 20 s of work: long enough to watch it run
const WAIT = 30_000 // per wait: CI machines are slow

// ─── what must not happen: collected all along, asserted at the end ───
const problems = []
let keyEntered = !key // before the key is typed, the 401s that ask for it are expected

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
      '--disable-dev-shm-usage',
    ],
  })
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } })
  context.setDefaultTimeout(WAIT)
  const page = await context.newPage()
  page.on('console', (msg) => {
    if (msg.type() !== 'error' && msg.type() !== 'warning') return
    if (!keyEntered && /status of 401/.test(msg.text())) return
    const at = msg.location()?.url ? ` (${msg.location().url}:${msg.location().lineNumber})` : ''
    problems.push(`console ${msg.type()}: ${msg.text()}${at}`)
  })
  page.on('pageerror', (err) => problems.push(`page error: ${err.stack || err.message}`))
  page.on('requestfailed', (req) => {
    const why = req.failure()?.errorText ?? 'unknown'
    // The dashboard aborts its event streams, long-polls and pending reads when the view
    // changes: that is by design, not a failure.
    if (why.includes('ERR_ABORTED') && req.method() === 'GET' && new URL(req.url()).pathname.startsWith('/v1/')) return
    problems.push(`request failed: ${req.method()} ${req.url()}: ${why}`)
  })
  page.on('response', (res) => {
    if (res.status() < 400) return
    if (!keyEntered && res.status() === 401) return
    problems.push(`HTTP ${res.status()}: ${res.request().method()} ${res.url()}`)
  })

  let n = 0
  const step = async (title, fn) => {
    n += 1
    try {
      await fn()
    } catch (err) {
      console.log(`not ok ${n} - ${title}: ${err.message}`)
      await page.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true }).catch(() => {})
      if (problems.length) console.log(`# also seen:\n${problems.map((p) => `#   ${p}`).join('\n')}`)
      console.log(`# screenshots in ${shots}`)
      throw err
    }
    console.log(`ok ${n} - ${title}`)
  }

  // Polls fn (in Node) until it returns something truthy.
  const until = async (what, fn, timeout = WAIT) => {
    const end = Date.now() + timeout
    let last
    for (;;) {
      last = await fn()
      if (last) return last
      if (Date.now() > end) throw new Error(`timed out after ${timeout / 1000} s waiting until ${what}`)
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  const progressOf = (locator) => locator.evaluate((el) => (el.hasAttribute('value') ? el.value : 0))
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
  const hash = () => page.evaluate(() => location.hash)

  try {
    await step('the dashboard loads and shows the jobs table', async () => {
      await page.goto(`${base}/`)
      const keyInput = page.getByLabel('API key', { exact: true })
      const table = page.getByTestId('jobs-table')
      await keyInput.or(table).first().waitFor()
      if (await keyInput.isVisible()) {
        if (!key) throw new Error('the dashboard asks for an API key: set FERRY_KEY')
        await keyInput.fill(key)
        keyEntered = true
        await page.getByRole('button', { name: 'Use key' }).click()
      } else if (key) {
        throw new Error('FERRY_KEY is set but the dashboard did not ask for a key (is the server open?)')
      }
      await table.waitFor()
      await page.getByRole('columnheader', { name: 'Progress' }).waitFor()
    })

    let jobId
    await step(`uploading ${path.basename(scanFile)} as a ${kind} job lands on the job's page`, async () => {
      await page.getByRole('navigation').getByRole('link', { name: 'Upload' }).click()
      await page.getByLabel('File', { exact: true }).setInputFiles(scanFile)
      await page.getByLabel('Kind', { exact: true }).fill(kind)
      await page.getByLabel(/^Params/).fill(JSON.stringify(PARAMS))
      await page.getByRole('button', { name: 'Upload and create job' }).click()
      // Lands on the job's page, or the status region shows why not (a problem's detail).
      const outcome = await page.waitForFunction(() => {
        if (/^#\/jobs\/job_[0-9a-f]{32}$/.test(location.hash)) return { ok: true }
        const status = document.getElementById('status')
        return status?.classList.contains('error') && status.textContent ? { error: status.textContent } : null
      }, null, { timeout: 2 * WAIT })
      const { error } = await outcome.jsonValue()
      if (error) throw new Error(`the dashboard says: ${error}`)
      jobId = (await hash()).split('/').pop()
      await page.getByRole('heading', { name: `Job ${jobId}` }).waitFor()
    })

    await step('the job page shows progress advancing and the intermediate preview.png', async () => {
      const bar = page.getByTestId('job-progress')
      const first = await until('the job progress is above 0', async () => {
        const v = await progressOf(bar)
        return v > 0 ? v : 0
      })
      await sleep(1000)
      await until(`the job progress rises above ${first}`, async () => (await progressOf(bar)) > first)
      const card = page.locator('[data-result="preview.png"]')
      await page.waitForFunction(() => {
        const img = document.querySelector('[data-result="preview.png"] img')
        return img && img.complete && img.naturalWidth > 0
      })
      const alt = await card.locator('img').getAttribute('alt')
      if (!alt) throw new Error('the preview image has no alt text')
      await card.getByText('intermediate', { exact: true }).waitFor()
      await page.screenshot({ path: path.join(shots, 'job.png'), fullPage: true })
    })

    await step("the jobs table shows the job's progress advancing", async () => {
      await page.getByRole('navigation').getByRole('link', { name: 'Jobs' }).click()
      const bar = page.locator(`tr[data-job-id="${jobId}"] progress`)
      await bar.waitFor()
      const first = await progressOf(bar)
      await sleep(1000)
      await until(`the row's progress rises above ${first}`, async () => (await progressOf(bar)) > first)
      const status = await page.locator(`tr[data-job-id="${jobId}"] .badge`).textContent()
      if (status !== 'running') throw new Error(`the job is ${status}, expected running (it must still run for the next step)`)
      await page.screenshot({ path: path.join(shots, 'jobs.png') })
    })

    await step('Cancel, confirmed in the dialog, cancels the job', async () => {
      await page.getByRole('link', { name: jobId }).click()
      await page.getByRole('heading', { name: `Job ${jobId}` }).waitFor()
      const cancel = page.getByRole('button', { name: 'Cancel', exact: true })
      await until('the Cancel button is enabled', () => cancel.isEnabled())
      await cancel.click()
      const dialog = page.getByRole('dialog')
      await dialog.waitFor()
      await dialog.getByRole('button', { name: 'Confirm' }).click()
      await until('the page shows the job canceled', async () =>
        (await page.getByTestId('job-status').textContent()) === 'canceled')
      const res = await fetch(`${base}/v1/jobs/${jobId}`, { headers: key ? { Authorization: `Bearer ${key}` } : {} })
      const job = await res.json()
      if (job.status !== 'canceled') throw new Error(`the API says the job is ${job.status}, not canceled`)
    })

    await step('the queue page draws its three charts', async () => {
      await page.getByRole('navigation').getByRole('link', { name: 'Queue' }).click()
      await page.getByTestId('queue-table').waitFor()
      await until('three charts are drawn', async () => (await page.locator('[data-testid=charts] svg').count()) === 3)
      for (const id of ['chart-depth', 'chart-throughput', 'chart-latency']) {
        const label = await page.getByTestId(id).getAttribute('aria-label')
        if (!label) throw new Error(`chart ${id} has no aria-label`)
      }
      await until(`a row for ${kind}`, () => page.getByRole('rowheader', { name: kind, exact: true }).count())
      await page.screenshot({ path: path.join(shots, 'queue.png'), fullPage: true })
    })

    await step('the keyboard reaches the navigation, and Enter follows a link', async () => {
      // A fresh load (a hash change alone would keep the focus where it is).
      await page.evaluate(() => { location.hash = '#/jobs' })
      await page.reload()
      await page.getByTestId('jobs-table').waitFor()
      let reached = null
      for (let i = 0; i < 6 && !reached; i += 1) {
        await page.keyboard.press('Tab')
        reached = await page.evaluate(() => {
          const el = document.activeElement
          return el && el.closest('nav') && ['A', 'BUTTON'].includes(el.tagName) ? el.textContent.trim() : null
        })
      }
      if (!reached) throw new Error('six presses of Tab did not reach a link or button in the navigation')
      while (reached !== 'Queue') {
        await page.keyboard.press('Tab')
        reached = await page.evaluate(() => document.activeElement?.textContent.trim())
        if (!['Jobs', 'Upload', 'Queue'].includes(reached)) throw new Error(`Tab left the navigation at ${reached}`)
      }
      await page.keyboard.press('Enter')
      await until('Enter on the Queue link opens the queue page', async () => (await hash()) === '#/queue')
    })

    await step('no console error or warning, page error, failed request or HTTP error', async () => {
      await sleep(500)
      if (problems.length) throw new Error(`${problems.length} seen:\n${problems.map((p) => `  ${p}`).join('\n')}`)
    })
    console.log(`# screenshots in ${shots}`)
  } finally {
    await browser.close()
  }
}

main().then(
  () => process.exit(0),
  () => process.exit(1),
)
