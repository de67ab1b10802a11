// Drives Debian's headless chromium over the DevTools protocol (a minimal
// WebSocket client: Node 18 has none built in) against a live lowband
// dashboard: waits for the charts to hold data, reads what they show,
// types the operator token and clicks "pause" with real mouse events,
// waits for the page to show the campaign paused, and saves a screenshot.
//
//   node dashboard_check.js URL TOKEN SCREENSHOT.png
//
// Prints one JSON line: {rounds, loss_points, last_val_loss, paused, message}.
// Exits non-zero (with the reason on stderr) on any failure or after 90 s.
"use strict";
const { spawn } = require("child_process");
const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const net = require("net");
const os = require("os");
const path = require("path");

const [url, token, shot] = process.argv.slice(2);
if (!url || !token || !shot) { console.error("usage: dashboard_check.js URL TOKEN SCREENSHOT.png"); process.exit(2); }
const die = (why) => { console.error("dashboard_check: " + why); process.exit(1); };
setTimeout(() => die("timed out after 90 s"), 90000).unref();

const profile = fs.mkdtempSync(path.join(os.tmpdir(), "lowband-chromium-"));
const browser = spawn(process.env.CHROMIUM || "chromium",
  ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
   "--remote-debugging-port=0", "--user-data-dir=" + profile, "--window-size=1400,1600", url],
  { stdio: ["ignore", "ignore", "pipe"] });
browser.on("error", (e) => die("cannot start chromium: " + e.message));
process.on("exit", () => {
  try { browser.kill("SIGKILL"); } catch (e) {}
  try { fs.rmSync(profile, { recursive: true, force: true, maxRetries: 5 }); } catch (e) {}  // chromium may still be writing
});

function devtoolsPort() {
  return new Promise((resolve) => {
    let buf = "";
    browser.stderr.on("data", (d) => {
      buf += d;
      const m = buf.match(/DevTools listening on ws:\/\/127\.0\.0\.1:(\d+)\//);
      if (m) resolve(Number(m[1]));
    });
  });
}
function getJson(port, p) {
  return new Promise((resolve, reject) => {
    http.get({ host: "127.0.0.1", port, path: p }, (res) => {
      let body = ""; res.on("data", (d) => (body += d)); res.on("end", () => { try { resolve(JSON.parse(body)); } catch (e) { reject(e); } });
    }).on("error", reject);
  });
}

// A WebSocket client for one DevTools target: masked text frames out,
// unfragmented frames in (all DevTools sends).
function connect(wsUrl) {
  const u = new URL(wsUrl);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname);
    const key = crypto.randomBytes(16).toString("base64");
    let buf = Buffer.alloc(0), open = false, next = 1;
    const pending = new Map();
    sock.on("connect", () => sock.write(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`));
    sock.on("error", reject);
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      if (!open) {
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        if (!/^HTTP\/1\.1 101/.test(buf.slice(0, end).toString())) return reject(new Error("no WebSocket upgrade"));
        buf = buf.slice(end + 4); open = true; resolve(api);
      }
      for (;;) {
        if (buf.length < 2) return;
        let len = buf[1] & 0x7f, off = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
        else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
        if (buf.length < off + len) return;
        const msg = JSON.parse(buf.slice(off, off + len).toString());
        buf = buf.slice(off + len);
        if (msg.id && pending.has(msg.id)) { pending.get(msg.id)(msg); pending.delete(msg.id); }
      }
    });
    const api = {
      send(method, params) {
        const id = next++;
        const payload = Buffer.from(JSON.stringify({ id, method, params: params || {} }));
        const mask = crypto.randomBytes(4);
        let head;
        if (payload.length < 126) head = Buffer.from([0x81, 0x80 | payload.length]);
        else if (payload.length < 65536) { head = Buffer.alloc(4); head[0] = 0x81; head[1] = 0x80 | 126; head.writeUInt16BE(payload.length, 2); }
        else { head = Buffer.alloc(10); head[0] = 0x81; head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(payload.length), 2); }
        const body = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
        sock.write(Buffer.concat([head, mask, body]));
        return new Promise((res, rej) => pending.set(id, (m) => (m.error ? rej(new Error(method + ": " + m.error.message)) : res(m.result))));
      },
      close() { sock.destroy(); },
    };
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function main() {
  const port = await devtoolsPort();
  let page;
  for (let i = 0; i < 50 && !page; i++) {
    page = (await getJson(port, "/json/list")).find((t) => t.type === "page" && t.url.startsWith(url));
    if (!page) await sleep(100);
  }
  if (!page) die("chromium opened no page for " + url);
  const cdp = await connect(page.webSocketDebuggerUrl);
  const evaluate = async (expr) => {
    const r = await cdp.send("Runtime.evaluate", { expression: expr, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error("page: " + JSON.stringify(r.exceptionDetails));
    return r.result.value;
  };
  // The charts hold data once the page has polled /api/state.
  let seen = null;
  for (let i = 0; i < 150; i++) {
    seen = await evaluate(`(()=>{const c=document.getElementById("c_loss");
      if(!c||typeof state==="undefined")return {points:0,rounds:0};
      return {points:Number(c.dataset.points||0), last:c.dataset.last||"", rounds:state?state.records.length:0,
              paused:state?state.status.paused:null, phase:state?state.status.phase:""}})()`);
    if (seen.points > 2 && seen.rounds >= 3) break;
    await sleep(200);
  }
  if (!seen || seen.points <= 2) die("the loss chart never showed data: " + JSON.stringify(seen));
  // Type the token, then a real click on "pause".
  await evaluate(`document.getElementById("token").value=${JSON.stringify(token)}`);
  const box = await evaluate(`(()=>{const r=document.getElementById("b_pause").getBoundingClientRect();
    return {x:r.x+r.width/2, y:r.y+r.height/2}})()`);
  for (const type of ["mousePressed", "mouseReleased"]) {
    await cdp.send("Input.dispatchMouseEvent", { type, x: box.x, y: box.y, button: "left", clickCount: 1 });
  }
  let after = null;
  for (let i = 0; i < 150; i++) {
    after = await evaluate(`({message:document.getElementById("msg").textContent, paused:state.status.paused,
      phase:state.status.phase, phaseText:document.getElementById("phase").textContent,
      rounds:state.records.length, last:document.getElementById("c_loss").dataset.last,
      points:Number(document.getElementById("c_loss").dataset.points)})`);
    if (after.paused && /\(paused\)/.test(after.phaseText)) break;
    await sleep(200);
  }
  if (!after.paused) die("the campaign never showed paused: " + JSON.stringify(after));
  const png = await cdp.send("Page.captureScreenshot", { format: "png" });
  fs.writeFileSync(shot, Buffer.from(png.data, "base64"));
  const lastVal = Number(after.last.split(",")[1]);
  console.log(JSON.stringify({ rounds: after.rounds, loss_points: after.points, last_val_loss: lastVal,
                               paused: after.paused, message: after.message }));
  cdp.close();
  process.exit(0);
}
main().catch((e) => die(e.stack || String(e)));
