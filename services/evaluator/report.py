"""The per-run report (JSON, Markdown, self-contained HTML, PNG figures, rollout GIFs) over a run directory.

See services/evaluator/records.py for what a run directory holds and for the evaluation records.
`build_report(run_dir)` writes report/report.{json,md,html} and report/img/*.png, report/gif/*.gif. Every policy
row is shown beside the log replay scored on the same agents (the expert row) and with "new failures": agents that
fail under the policy but not in their own log, so log artefacts (parked cars outside mapped road edges, logged
overlaps) are never counted as the policy's failures. Moving vehicles are reported apart from parked ones.
"""

from __future__ import annotations

import datetime
import glob
import html
import json
import os

import numpy as np

from services.evaluator import plots
from services.evaluator.records import (EVAL_DIR, PERIODIC_DIR, REPORT_DIR, _atomic_json, agent_columns,
                                        expert_on_same_agents, git_commit, load_evaluations, load_history,
                                        load_periodic, load_scenes, make_record, versions, worst_scenes,
                                        write_evaluation)

def build_report(run_dir: str, worst_k: int = 3, gif_stride: int = 3) -> dict[str, object]:
  """Writes run_dir/report/{report.json, report.md, report.html, img/, gif/}; returns {kind: path or paths}."""
  out = os.path.join(run_dir, REPORT_DIR)
  for sub, ext in (("img", "*.png"), ("gif", "*.gif")):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
    for old in glob.glob(os.path.join(out, sub, ext)):  # a rebuild must not keep pictures of an older ranking
      os.remove(old)
  records = load_evaluations(run_dir)
  log_rec = next((r for r in reversed(records) if r["policy"] == "log"), None)
  entries = []
  for r in records:
    same = expert_on_same_agents(r, log_rec) if (log_rec is not None and r is not log_rec) else None
    entries.append({"record": r, "expert": None if same is None else same[0],
                    "new_failures": None if same is None else same[1],
                    "new_per_scene": None if same is None else same[2]})
  pngs, gifs = _figures(run_dir, out, records, entries), _gifs(out, entries, worst_k, gif_stride)
  report = {
      "run_dir": os.path.abspath(run_dir), "git_commit": git_commit(), "versions": versions(),
      "generated_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "evaluations": [entry_json(e) for e in entries], "periodic": load_periodic(run_dir),
      "images": {k: os.path.relpath(v, out) for k, v in pngs.items()},
      "worst_scenes": [dict(g, gif=os.path.relpath(g["gif"], out)) for g in gifs],
  }
  paths = {"json": os.path.join(out, "report.json"), "md": os.path.join(out, "report.md"),
           "html": os.path.join(out, "report.html")}
  md, page = markdown(report, entries), html_page(report, entries)
  _atomic_json(paths["json"], report)
  for key, text in (("md", md), ("html", page)):
    with open(paths[key], "w") as f:
      f.write(text)
  return dict(paths, png=list(pngs.values()), gif=[g["gif"] for g in gifs])


def _figures(run_dir: str, out: str, records: list[dict], entries: list[dict]) -> dict[str, str]:
  pngs = {}
  if records:
    rows = [(f"{r['id']}", r["summary"]) for r in records]
    for split in ("moving", "parked"):
      pngs[f"metrics_{split}"] = plots.metric_bars(rows, os.path.join(out, "img", f"metrics_{split}.png"), split)
  history = load_history(run_dir)
  if history and plots.learning_curves(history, os.path.join(out, "img", "learning_curves.png")):
    pngs["learning_curves"] = os.path.join(out, "img", "learning_curves.png")
  periodic = load_periodic(run_dir)
  if periodic and plots.learning_curves(periodic, os.path.join(out, "img", "periodic_eval.png")):
    pngs["periodic_eval"] = os.path.join(out, "img", "periodic_eval.png")
  return pngs


def _gifs(out: str, entries: list[dict], worst_k: int, stride: int) -> list[dict]:
  """GIFs of the worst scenes of the newest evaluation of each policy other than the log."""
  newest = {}
  for e in entries:
    if e["record"]["policy"] != "log":
      newest[e["record"]["policy"]] = e
  gifs = []
  for e in newest.values():
    rec, new = e["record"], e["new_per_scene"]
    picks = worst_scenes(rec, worst_k, new)
    if not picks:
      continue
    scenarios, metas = load_scenes(rec)
    with np.load(os.path.join(os.path.dirname(out), EVAL_DIR, rec["trajectories"]), allow_pickle=False) as z:
      traj = {k: z[k] for k in ("x", "y", "yaw")}
    for i in picks:
      path = os.path.join(out, "gif", f"{rec['id']}_scene{i:03d}.gif")
      plots.rollout_gif(scenarios[i], metas[i], traj["x"][i], traj["y"][i], traj["yaw"][i], path, stride)
      gifs.append({"evaluation": rec["id"], "policy": rec["policy"], "scene": i, "name": metas[i].name,
                   "summary": rec["per_scene"][i]["summary"]["all"], "gif": path,
                   "new_failures": None if new is None else new[i]})
  return gifs


# PAGES: one list of sections rendered twice, as Markdown and as HTML.

COLUMNS = (("agents", "agents"), ("failure", "failure"), ("new_failures", "new failures"), ("collision", "collision"),
           ("offroad", "off-road"), ("offroute", "off-route"), ("goal_reached", "goal"), ("red_light_run", "red light"),
           ("stop_line_violation", "stop line"), ("progress_ratio", "progress"), ("episodic_reward", "ep. reward"),
           ("ade_m", "ADE m"), ("collision_with_controlled", "collided with controlled"),
           ("rear_ended_by_log", "rear-ended by log"), ("failed_after_goal", "failed after goal"))


def cell(s: dict | None, key: str, new: dict | None = None) -> str:
  if s is None:
    return "-"
  if key == "agents":
    return str(s["agents"])
  v = new if key == "new_failures" else s.get(key)
  if not v:
    return "-"
  if "rate" in v:
    return "-" if v["rate"] is None else f"{100 * v['rate']:.1f}% ({v['count']}/{v['total']})"
  if v["mean"] is None:
    return "-"
  if key == "progress_ratio":
    return f"{100 * v['mean']:.1f}% (n={v['total']})"
  return f"{v['mean']:+.2f}" if key == "episodic_reward" else f"{v['mean']:.2f}"


def entry_json(e: dict) -> dict:
  r = e["record"]
  keep = ("id", "policy", "source", "created_utc", "git_commit", "split", "summary", "summary_train",
          "summary_held_out")
  scenes = [{"name": s["name"], "split": s["split"], "summary": s["summary"]} for s in r["per_scene"]]
  return dict({k: r.get(k) for k in keep}, expert_same_agents=e["expert"], new_failures=e["new_failures"],
              new_failures_per_scene=e["new_per_scene"], per_scene=scenes)


def _metric_table(entries: list[dict], split: str) -> tuple[list[str], list[list[str]]]:
  head = ["evaluation"] + [name for _, name in COLUMNS]
  rows = []
  for e in entries:
    r, new = e["record"], (e["new_failures"] or {}).get(split)
    rows.append([r["id"]] + [cell(r["summary"][split], k, new) for k, _ in COLUMNS])
    if e["expert"] is not None:
      rows.append(["  log replay, same agents"] + [cell(e["expert"][split], k) for k, _ in COLUMNS])
  return head, rows


def _split_table(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
  keys = ("failure", "collision", "offroad", "goal_reached", "progress_ratio")
  head = ["evaluation", "scenes", "vehicles"] + ["agents"] + [dict(COLUMNS)[k] for k in keys]
  rows = []
  for e in entries:
    r = e["record"]
    for name, key in (("train", "summary_train"), ("held-out", "summary_held_out")):
      for veh in ("moving", "parked"):
        rows.append([r["id"], name, veh, cell(r[key][veh], "agents")] + [cell(r[key][veh], k) for k in keys])
  return head, rows


def _scene_table(r: dict) -> tuple[list[str], list[list[str]]]:
  keys = ("failure", "collision", "offroad", "goal_reached", "progress_ratio")
  head = ["scene", "split", "agents (moving)"] + [dict(COLUMNS)[k] for k in keys]
  rows = [[s["name"], s["split"], f"{s['summary']['all']['agents']} ({s['summary']['moving']['agents']})"]
          + [cell(s["summary"]["all"], k) for k in keys] for s in r["per_scene"]]
  return head, rows


def _sections(report: dict, entries: list[dict]) -> list[dict]:
  """[{title, text, table: (head, rows) | None, images: [(caption, rel path)]}]"""
  note = ("Rates are per agent with (count/total). 'log replay, same agents' is the expert row: every object set to "
          "its logged state, scored on the policy's agents. 'new failures' counts agents that fail under the policy "
          "but not in their own log: logged overlaps and parked cars outside mapped road edges are log artefacts, "
          "never policy failures. Moving = logged speed above 1 m/s at some simulated step.")
  sec = []
  for split in ("moving", "parked", "all"):
    sec.append({"title": f"Metrics: {split} vehicles", "text": note if split == "moving" else "",
                "table": _metric_table(entries, split), "images": []})
  imgs = report["images"]
  sec.append({"title": "Metric bars", "text": "", "table": None,
              "images": [(k, v) for k, v in imgs.items() if k.startswith("metrics_")]})
  sec.append({"title": "Train vs held-out scenes", "text": "Split by a seeded hash of the scenario id.",
              "table": _split_table(entries), "images": []})
  periodic = report["periodic"][-10:]
  if periodic:
    keys = sorted({k for r in periodic for k in r if k not in ("split", "time_s")} - {"params_version"})
    rows = [[str(r.get("params_version")), str(r.get("split"))] + [f"{r[k]:.4g}" if k in r else "-" for k in keys]
            for r in periodic]
    sec.append({"title": "Periodic evaluations (evaluator service, newest 10)", "text": "",
                "table": (["params version", "split"] + keys, rows), "images": []})
  curves = [(k, imgs[k]) for k in ("learning_curves", "periodic_eval") if k in imgs]
  sec.append({"title": "Learning curves", "table": None, "images": curves,
              "text": "" if curves else "No metrics history (metrics_history.jsonl) or periodic evaluations found."})
  for g in report["worst_scenes"]:
    s = g["summary"]
    own = "" if g["new_failures"] is None else f" ({g['new_failures']} not failing in the log)"
    text = (f"{g['policy']} on scene {g['scene']} ({g['name']}): failure {cell(s, 'failure')}{own}, progress "
            f"{cell(s, 'progress_ratio')}. Filled boxes: policy; dashed outlines: log.")
    sec.append({"title": f"Worst scene: {g['evaluation']} #{g['scene']}", "text": text, "table": None,
                "images": [(g["name"], g["gif"])]})
  for e in entries:
    sec.append({"title": f"Per scene: {e['record']['id']}", "text": "", "table": _scene_table(e["record"]),
                "images": []})
  vers = [[k, str(v)] for k, v in report["versions"].items()]
  sec.append({"title": "Versions", "text": f"git commit {report['git_commit']}", "table": (["package", "version"],
             vers), "images": []})
  if entries:
    sec.append({"title": "Configuration (newest evaluation)", "table": None, "images": [],
                "text": "", "code": json.dumps(entries[-1]["record"]["config"], indent=1)})
  return sec


def markdown(report: dict, entries: list[dict]) -> str:
  lines = [f"# Evaluation report: {report['run_dir']}", "", f"Generated {report['generated_utc']}.", ""]
  for s in _sections(report, entries):
    lines += [f"## {s['title']}", ""] + ([s["text"], ""] if s["text"] else [])
    if s["table"] is not None:
      head, rows = s["table"]
      lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
      lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows] + [""]
    lines += [f"![{cap}]({path})" for cap, path in s["images"]] + ([""] if s["images"] else [])
    if s.get("code"):
      lines += ["```json", s["code"], "```", ""]
  return "\n".join(lines)


CSS = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
       "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}td:first-child{text-align:left}"
       "th{background:#eee}tr.expert{color:#555;font-style:italic}img{max-width:100%;margin:6px 0}"
       "pre{background:#f4f4f4;padding:8px;font-size:12px}")


def html_page(report: dict, entries: list[dict]) -> str:
  esc = html.escape
  out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>drivelab evaluation report</title>",
         f"<style>{CSS}</style></head><body>", f"<h1>Evaluation report: {esc(report['run_dir'])}</h1>",
         f"<p>Generated {esc(report['generated_utc'])}.</p>"]
  for s in _sections(report, entries):
    out.append(f"<h2>{esc(s['title'])}</h2>")
    if s["text"]:
      out.append(f"<p>{esc(s['text'])}</p>")
    if s["table"] is not None:
      head, rows = s["table"]
      out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
      for row in rows:
        cls = " class='expert'" if row[0].startswith("  log replay") else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
      out.append("</table>")
    for cap, path in s["images"]:
      out.append(f"<figure><img src='{esc(path)}' alt='{esc(cap)}'><figcaption>{esc(cap)}</figcaption></figure>")
    if s.get("code"):
      out.append(f"<pre>{esc(s['code'])}</pre>")
  out.append("</body></html>")
  return "\n".join(out)


# The record functions are re-exported: callers use `report.make_record` etc.
__all__ = ["make_record", "write_evaluation", "load_evaluations", "load_periodic", "load_history", "build_report",
           "expert_on_same_agents", "worst_scenes", "load_scenes", "versions", "git_commit", "agent_columns",
           "EVAL_DIR", "PERIODIC_DIR", "REPORT_DIR", "COLUMNS", "cell"]
