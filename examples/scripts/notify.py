"""Hand a batch of messages to courier from Python: one JSON line each.

    python3 notify.py alerts.json   (enqueue on PATH, REDIS_URL set)

Exit status: 0 all enqueued (duplicates included), 2 some invalid (the rest
enqueued), 1 Redis or other failure.
"""
import json, os, subprocess, sys

alerts = json.load(open(sys.argv[1]))
lines = [json.dumps({"roomId": a["room"], "markdown": f"**{a['title']}**\n{a['detail']}", "key": f"alert/{a['id']}"}) for a in alerts]
p = subprocess.run([os.environ.get("ENQUEUE", "enqueue"), "--jsonl", "-", "--json"], input="\n".join(lines), capture_output=True, text=True)
results = [json.loads(line) for line in p.stdout.splitlines()]
for r in results[:-1]:
    if r["status"] not in ("enqueued", "duplicate"):
        print(f"line {r['line']}: {r['status']}: {r.get('error', '')}", file=sys.stderr)
print(json.dumps(results[-1]["summary"]) if results else p.stderr.strip())
sys.exit(p.returncode)
