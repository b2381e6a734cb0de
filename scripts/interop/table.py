"""The rows of docs/INTEROP.md from the files scripts/interop/run.sh leaves in OUT:
here-vllm.json / here-ct.json (`quantize eval`, vLLM's and compressed-tensors' activation
rounding) and there-*.json (scripts/interop/perplexity_hf.py in transformers).

  python3 scripts/interop/table.py OUT
"""

import json
import os
import statistics
import sys


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def here(path):
    """dir name -> perplexity from a `quantize eval --json` report (one model or several)."""
    j = load(path)
    if j is None:
        return {}
    rows = j if isinstance(j, list) else [j]
    return {os.path.basename(os.path.normpath(r["model"])): r["perplexity"]["perplexity"] for r in rows}


def main():
    out = sys.argv[1]
    ours_v, ours_ct = here(os.path.join(out, "here-vllm.json")), here(os.path.join(out, "here-ct.json"))
    ours_v.update(here(os.path.join(out, "here-gptqmodel-made.json")))
    rows = []
    for name in ("there-ct.json", "there-ct020.json", "there-gptqmodel.json", "there-noise.json"):
        j = load(os.path.join(out, name))
        if j is None:
            continue
        v = j["versions"]
        client = f"transformers {v['transformers']}"
        if "compressed_tensors" in v:
            client += f" + compressed-tensors {v['compressed_tensors']}"
        if "gptqmodel" in v:
            client += f" + GPTQModel {v['gptqmodel']}"
        for r in j["results"]:
            d = os.path.basename(os.path.normpath(r["dir"]))
            rows.append({"dir": r["dir"], "name": d, "client": client, "there": r.get("perplexity"),
                         "error": r.get("error"), "noise": r.get("noise", []), "windows": j["windows"]})
    print("| checkpoint | made by | client | here | here, compressed-tensors rounding | there | difference | 1-ulp spread there |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["name"]
        maker = {"llmc-": "llm-compressor", "gptqmodel-": "GPTQModel"}.get(d.split("-")[0] + "-", "this tool")
        maker = "f32 model" if d == "smollm2" else maker
        fmt = lambda x: "" if x is None else f"{x:.4f}"
        hv = ours_v.get(d)
        hc = ours_ct.get(d)
        ref = hc if hc is not None else hv
        if r["error"]:
            print(f"| {d} | {maker} | {r['client']} | {fmt(hv)} | {fmt(hc)} | refused: {r['error'][:120]} | | |")
            continue
        diff = "" if ref is None else f"{(ref / r['there'] - 1) * 100:+.3f}%"
        spread = ""
        if r["noise"]:
            vals = r["noise"] + [r["there"]]
            spread = f"{min(vals):.4f} – {max(vals):.4f} (sd {statistics.stdev(vals) / statistics.mean(vals) * 100:.2f}%)"
        print(f"| {d} | {maker} | {r['client']} | {fmt(hv)} | {fmt(hc)} | {r['there']:.4f} | {diff} | {spread} |")


if __name__ == "__main__":
    main()
