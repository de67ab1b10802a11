#include "coordinator/dashboard.h"

#include <fstream>
#include <sstream>

#include "base/json.h"

namespace lowband {

const std::string& DashboardPage() {
  static const std::string page = R"LBHTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lowband</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
header{background:#1d2430;color:#fff;padding:10px 18px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
.pill{padding:2px 8px;border-radius:10px;background:#3b475c}
main{padding:14px;display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:14px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 12px}
section h2{font-size:14px;margin:0 0 8px}
canvas{width:100%;height:230px}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #eceff3;padding:3px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
button{margin:2px;padding:4px 10px}
#msg{font-size:13px;color:#444;min-height:18px}
.ro{color:#8a5300}
</style></head><body>
<header><h1 id="name">lowband</h1><span id="phase" class="pill">-</span><span id="round">-</span>
<span id="workers">-</span><span id="loss">-</span><span id="bytes">-</span></header>
<main>
<section><h2>Loss against round</h2><canvas id="c_loss"></canvas></section>
<section><h2>Validation loss against cumulative bytes (up + down)</h2><canvas id="c_bytes"></canvas></section>
<section><h2>Bytes per round, by site and direction</h2><canvas id="c_sites"></canvas></section>
<section><h2>Compression ratio (up) against round</h2><canvas id="c_ratio"></canvas></section>
<section><h2>Round latency and exposed communication (s)</h2><canvas id="c_latency"></canvas></section>
<section><h2>Workers</h2><table id="t_workers"><thead><tr><th>site</th><th>ranks</th><th>stage</th><th>state</th>
<th>last heard (s)</th><th>step (ms)</th><th>H_i</th><th>val loss</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Round control</h2>
<div><input id="token" type="password" placeholder="operator token" size="28">
<button id="b_pause">pause</button><button id="b_resume">resume</button><button id="b_close">close round</button></div>
<div id="msg"></div></section>
<section id="s_fcrag" hidden><h2>FC-RAG calibration</h2><table id="t_fcrag"><tbody></tbody></table></section>
</main>
<script>
"use strict";
const colors=["#1f77b4","#d62728","#2ca02c","#ff7f0e","#9467bd","#8c564b","#e377c2","#17becf"];
let state=null;
function num(v){return typeof v==="number"&&isFinite(v)}
function fmtBytes(b){const u=["B","KB","MB","GB","TB"];let i=0;while(b>=1000&&i<4){b/=1000;i++}return b.toFixed(i?2:0)+" "+u[i]}
// series: [{name, points:[[x,y],...]}]; bars: draw as bars when opts.bars.
function chart(id,series,opts){
  const c=document.getElementById(id),dpr=window.devicePixelRatio||1;
  const w=c.clientWidth,h=c.clientHeight;c.width=w*dpr;c.height=h*dpr;
  const g=c.getContext("2d");g.scale(dpr,dpr);g.clearRect(0,0,w,h);g.font="11px system-ui";
  const pts=series.flatMap(s=>s.points).filter(p=>num(p[0])&&num(p[1]));
  c.dataset.points=String(pts.length);
  c.dataset.last=series.map(s=>{const p=s.points.filter(q=>num(q[1]));return p.length?p[p.length-1][1]:""}).join(",");
  if(!pts.length){g.fillStyle="#888";g.fillText("no data yet",10,20);return}
  let x0=Math.min(...pts.map(p=>p[0])),x1=Math.max(...pts.map(p=>p[0]));
  let y0=Math.min(...pts.map(p=>p[1])),y1=Math.max(...pts.map(p=>p[1]));
  if(opts&&opts.zero)y0=Math.min(0,y0);
  if(x1===x0)x1=x0+1;if(y1===y0){y1+=Math.abs(y1)*0.1+1e-9;y0-=Math.abs(y0)*0.1}
  const L=58,R=10,T=18,B=26,W=w-L-R,H=h-T-B;
  const X=x=>L+(x-x0)/(x1-x0)*W,Y=y=>T+H-(y-y0)/(y1-y0)*H;
  g.strokeStyle="#ccc";g.fillStyle="#555";g.lineWidth=1;
  for(let i=0;i<=4;i++){const y=y0+(y1-y0)*i/4,yy=Y(y);g.beginPath();g.moveTo(L,yy);g.lineTo(L+W,yy);g.stroke();
    g.fillText(opts&&opts.ybytes?fmtBytes(y):(Math.abs(y)>=1000?y.toExponential(1):y.toPrecision(4)),2,yy+4)}
  const ints=pts.every(p=>Number.isInteger(p[0]))&&!(opts&&opts.xbytes);
  const step=ints?Math.max(1,Math.ceil((x1-x0)/6)):(x1-x0)/5;
  for(let x=x0;x<=x1+1e-9;x+=step){
    g.fillText(opts&&opts.xbytes?fmtBytes(x):(Math.round(x*10)/10).toString(),X(x)-10,T+H+16)}
  series.forEach((s,k)=>{g.strokeStyle=g.fillStyle=s.color||colors[k%colors.length];
    const p=s.points.filter(q=>num(q[0])&&num(q[1]));
    if(opts&&opts.bars){const bw=Math.max(2,W/Math.max(1,(x1-x0+1))/series.length*0.8);
      p.forEach(q=>g.fillRect(X(q[0])+k*bw-bw*series.length/2,Y(q[1]),bw,Y(y0)-Y(q[1])))}
    else{g.beginPath();p.forEach((q,i)=>i?g.lineTo(X(q[0]),Y(q[1])):g.moveTo(X(q[0]),Y(q[1])));g.lineWidth=1.8;g.stroke();
      p.forEach(q=>{g.beginPath();g.arc(X(q[0]),Y(q[1]),2,0,7);g.fill()})}
    g.fillText(s.name,L+8+k*110,12)});
}
function render(){
  if(!state)return;
  const st=state.status,recs=state.records;
  document.getElementById("name").textContent="lowband: "+st.campaign;
  document.getElementById("phase").textContent=st.phase+(st.paused?" (paused)":"");
  document.getElementById("round").textContent="round "+st.committed_round+" / "+st.rounds;
  document.getElementById("workers").textContent=st.live_workers+" / "+st.expected_workers+" workers";
  const last=recs.length?recs[recs.length-1]:null;
  document.getElementById("loss").textContent=last&&num(last.val_loss)?"val loss "+last.val_loss.toFixed(4):"";
  let cum=0;const cumBytes=recs.map(r=>(cum+=(r.bytes_up||0)+(r.bytes_down||0)));
  document.getElementById("bytes").textContent=fmtBytes(cum)+" moved";
  chart("c_loss",[{name:"train",points:recs.filter(r=>r.round>0).map(r=>[r.round,r.train_loss])},
                 {name:"validation",points:recs.map(r=>[r.round,r.val_loss])}]);
  chart("c_bytes",[{name:"validation",points:recs.map((r,i)=>[cumBytes[i],r.val_loss])}],{xbytes:true});
  const sites=Object.keys(last&&last.sites||{});
  chart("c_sites",sites.flatMap(s=>[
    {name:s+" up",points:recs.filter(r=>r.round>0&&r.sites&&r.sites[s]).map(r=>[r.round,r.sites[s].bytes_up])},
    {name:s+" down",points:recs.filter(r=>r.round>0&&r.sites&&r.sites[s]).map(r=>[r.round,r.sites[s].bytes_down])}]),
    {bars:true,zero:true,ybytes:true});
  chart("c_ratio",[{name:"up",points:recs.filter(r=>r.round>0).map(r=>[r.round,r.compression_ratio])},
                   {name:"down",points:recs.filter(r=>r.round>0).map(r=>[r.round,r.compression_ratio_down])}],{zero:true});
  chart("c_latency",[{name:"round",points:recs.filter(r=>r.round>0).map(r=>[r.round,r.wall_s])},
                     {name:"exposed comm",points:recs.filter(r=>r.round>0).map(r=>[r.round,r.exposed_comm_s])}],{zero:true});
  const tb=document.querySelector("#t_workers tbody");tb.innerHTML="";
  state.workers.forEach(w=>{const tr=document.createElement("tr");
    [w.site,w.ranks||1,w.stage>=0?w.stage:"",w.state,num(w.last_seen_s)?w.last_seen_s.toFixed(1):"",num(w.step_time_ms)?w.step_time_ms.toFixed(0):"",
     w.inner_steps||"",num(w.val_loss)?w.val_loss.toFixed(4):""].forEach(v=>{const td=document.createElement("td");td.textContent=v;tr.appendChild(td)});
    const td=document.createElement("td");
    if(w.state==="joined"){const b=document.createElement("button");b.textContent="evict";b.onclick=()=>control("evict",w.site);td.appendChild(b)}
    tr.appendChild(td);tb.appendChild(tr)});
  if(state.fcrag){document.getElementById("s_fcrag").hidden=false;const t=document.querySelector("#t_fcrag tbody");t.innerHTML="";
    for(const k of ["alpha","score_bits","summary_bits","trials","threshold","coverage_mean","coverage_min","set_size_mean","qq_coverage_mean","qq_set_size_mean"]){
      const tr=document.createElement("tr");tr.innerHTML="<td></td><td></td>";tr.children[0].textContent=k;
      tr.children[1].textContent=String(state.fcrag[k]);t.appendChild(tr)}}
  const ro=!state.control;["b_pause","b_resume","b_close"].forEach(id=>document.getElementById(id).disabled=ro);
  document.querySelectorAll("#t_workers button").forEach(b=>b.disabled=ro);
  if(ro){const m=document.getElementById("msg");m.className="ro";m.textContent="read-only: no network.dashboard_token configured"}
}
async function poll(){
  try{const r=await fetch("/api/state",{cache:"no-store"});if(r.ok){state=await r.json();render()}}catch(e){}
  setTimeout(poll,1000);
}
async function control(command,site){
  const tok=document.getElementById("token").value;sessionStorage.setItem("lowband_token",tok);
  const q="command="+encodeURIComponent(command)+(site?"&site="+encodeURIComponent(site):"");
  const r=await fetch("/api/control?"+q,{method:"POST",headers:{"Authorization":"Bearer "+tok}});
  const body=await r.json().catch(()=>({message:r.statusText}));
  const m=document.getElementById("msg");m.className="";m.textContent=(r.ok&&body.ok?"ok: ":"refused: ")+body.message;
  poll();
}
document.getElementById("token").value=sessionStorage.getItem("lowband_token")||"";
document.getElementById("b_pause").onclick=()=>control("pause");
document.getElementById("b_resume").onclick=()=>control("resume");
document.getElementById("b_close").onclick=()=>control("close");
window.addEventListener("resize",render);
poll();
</script></body></html>
)LBHTML";
  return page;
}

namespace {

// The value after "key": in a flat JSON line (numbers and strings only).
std::string JsonField(const std::string& line, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  const size_t at = line.find(needle);
  if (at == std::string::npos) return "";
  size_t start = at + needle.size();
  size_t end = start;
  if (start < line.size() && line[start] == '"') {
    end = line.find('"', start + 1);
    return end == std::string::npos ? "" : line.substr(start + 1, end - start - 1);
  }
  while (end < line.size() && line[end] != ',' && line[end] != '}') ++end;
  return line.substr(start, end - start);
}

}  // namespace

StatusOr<std::string> ReportPage(const std::string& run_dir) {
  const std::string metrics_path = run_dir + "/metrics.jsonl";
  std::ifstream metrics(metrics_path);
  if (!metrics) return NotFound("no " + metrics_path + " (the campaign's round records)");
  std::string records = "[", last;
  int n = 0, line_no = 0;
  for (std::string line; std::getline(metrics, line);) {
    ++line_no;
    if (line.empty()) continue;
    const std::string round = JsonField(line, "round");
    if (line.front() != '{' || line.back() != '}' || round.empty() || round.size() > 9 ||
        round.find_first_not_of("0123456789") != std::string::npos) {
      return InvalidArgument(metrics_path + ":" + std::to_string(line_no) + ": not a round record");
    }
    records += (n++ ? "," : "") + line;
    last = line;
  }
  records += "]";
  if (n == 0) return InvalidArgument(metrics_path + " holds no round records");
  // summary.txt: "key value" lines.
  std::string name = "campaign", status = "stopped";
  std::ifstream summary(run_dir + "/summary.txt");
  for (std::string key, value; summary >> key && std::getline(summary, value);) {
    value.erase(0, value.find_first_not_of(' '));
    if (key == "campaign") name = value;
    if (key == "status") status = value;
  }
  std::string fcrag = "null";
  if (std::ifstream f(run_dir + "/fcrag.json"); f) {
    std::stringstream ss;
    ss << f.rdbuf();
    fcrag = ss.str();
    while (!fcrag.empty() && (fcrag.back() == '\n' || fcrag.back() == ' ')) fcrag.pop_back();
    if (fcrag.empty() || fcrag.front() != '{' || fcrag.back() != '}') return InvalidArgument(run_dir + "/fcrag.json is not a JSON object");
  }
  JsonObject st;
  const std::string round = JsonField(last, "round");
  st.Add("campaign", name).Add("phase", status).Add("committed_round", static_cast<uint64_t>(std::stoull(round)))
      .Add("rounds", static_cast<uint64_t>(std::stoull(round)))
      .Add("live_workers", 0).Add("expected_workers", 0).Add("paused", false);
  JsonObject state;
  state.AddRaw("status", st.str()).AddRaw("workers", "[]").AddRaw("records", records).Add("control", false)
      .AddRaw("fcrag", fcrag);
  std::string embedded = state.str();
  // Inside <script>: a "</" could end it early.
  for (size_t at = embedded.find("</"); at != std::string::npos; at = embedded.find("</", at + 3)) {
    embedded.replace(at, 2, "<\\/");
  }
  std::string page = DashboardPage();
  const std::string live = "poll();\n</script>";
  const size_t at = page.rfind(live);
  if (at == std::string::npos) return Internal("the dashboard page has no poll() to replace");
  page.replace(at, live.size(),
               "state=" + embedded + ";render();\ndocument.querySelectorAll(\"section\").forEach(s=>{"
               "if(s.querySelector(\"#token\")||s.querySelector(\"#t_workers\"))s.hidden=true});\n</script>");
  const std::string title = "<title>lowband</title>";
  page.replace(page.find(title), title.size(), "<title>lowband report: " + name + "</title>");
  return page;
}

}  // namespace lowband
