#!/usr/bin/env python3
"""sha256 of every file of every run directory under ROOT, ignoring the run record:
.safetensors over the header without __metadata__ plus the tensor data, config.json
without quantization_config.quantize_options / recipe, recipe.toml skipped.
Usage: scripts/hash_outputs.py ROOT"""
import hashlib, json, os, struct, sys
root = sys.argv[1]
for run in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
    for f in sorted(os.listdir(os.path.join(root, run))):
        p = os.path.join(root, run, f)
        b = open(p, 'rb').read()
        if f.endswith('.safetensors'):
            n = struct.unpack('<Q', b[:8])[0]
            hdr = json.loads(b[8:8 + n]); hdr.pop('__metadata__', None)
            h = hashlib.sha256(json.dumps(hdr, sort_keys=True).encode() + b[8 + n:]).hexdigest()
        elif f == 'config.json':
            c = json.loads(b); qc = c.get('quantization_config', {})
            for k in ('quantize_options', 'recipe'):
                qc.pop(k, None)
            h = hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()
        elif f == 'recipe.toml':
            continue
        else:
            h = hashlib.sha256(b).hexdigest()
        print(f"{h}  {run}/{f}")
