#!/usr/bin/env bash
# A real two-way vdirsyncer (PyPI) sync against kartei over HTTPS with the generated self-signed certificate:
# discover, initial upload of ~20 varied vCards (3.0 and 4.0, non-ASCII, photos, groups), local edits, remote
# edits (curl PUT with If-Match), deletions on both sides, and one conflict resolved with "a wins". After
# every step both sides must hold the same cards (same UIDs, same content). Prints a summary line; exits
# non-zero on any disagreement.
# Usage: tests/interop/vdirsyncer.sh [path-to-kartei-binary]   (KARTEI_BIN is honoured too)
set -euo pipefail
KARTEI_BIN=${1:-${KARTEI_BIN:-target/debug/kartei}}
cd "$(dirname "$0")/../.."
repo=$(pwd)
# A relative binary path is taken from the caller's directory, else from the repository.
case "$KARTEI_BIN" in /*) ;; *) [ -x "$OLDPWD/$KARTEI_BIN" ] && KARTEI_BIN="$OLDPWD/$KARTEI_BIN" ;; esac
command -v vdirsyncer >/dev/null || { echo "vdirsyncer is not installed (python3 -m pip install vdirsyncer)"; exit 1; }
[ -x "$KARTEI_BIN" ] || { echo "no kartei binary at $KARTEI_BIN (cargo build first)"; exit 1; }
started=$(date +%s)

work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "vdirsyncer: FAILED: $*" >&2
  if [ -f "$work/vdirsyncer.log" ]; then echo "--- last vdirsyncer output:" >&2; tail -30 "$work/vdirsyncer.log" >&2; fi
  if [ -f "$work/server.log" ]; then echo "--- last server log lines:" >&2; grep -v "admin API token" "$work/server.log" | tail -20 >&2; fi
  exit 1
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/kartei.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
[tls]
mode = "self-signed"
[storage]
data_dir = "$work/data"
[log]
level = "warn"
CONF
user=vdir
password=$("$KARTEI_BIN" --config "$work/kartei.toml" user add --username "$user" --json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
"$KARTEI_BIN" --config "$work/kartei.toml" serve >"$work/server.log" 2>&1 &
server=$!
base="https://127.0.0.1:$port"
cert="$work/data/tls/cert.pem"
for _ in $(seq 100); do
  [ -f "$cert" ] && curl -s -o /dev/null --cacert "$cert" "$base/" && break
  sleep 0.1
done
curl -s -o /dev/null --cacert "$cert" "$base/" || fail "the server did not start"
book="/dav/addressbooks/$user/contacts/"
export KV_BASE="$base" KV_CERT="$cert" KV_USER="$user" KV_PASSWORD="$password" KV_BOOK="$book"

# --- the local side: ~20 valid vCards from the corpus, topped up with generated ones ----------------------
mkdir -p "$work/local/contacts" "$work/status"
corpus=""
for dir in "$repo/fixtures/vcards" "$repo/../shared/fixtures/vcards"; do
  if [ -d "$dir" ]; then corpus=$dir; break; fi
done
python3 - "$corpus" "$work/local/contacts" <<'PY'
# Picks single-card, UTF-8, 3.0/4.0 files with a unique UID and an FN (both versions, non-ASCII, photos and
# groups preferred), and generates cards until there are 20.
import base64, os, re, sys
corpus, out = sys.argv[1], sys.argv[2]
picked, uids = [], set()

def unfold(t):
    return re.sub(r"\r?\n[ \t]", "", t)

def ok(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("\ufeff") or text.count("BEGIN:VCARD") != 1 or not text.rstrip().endswith("END:VCARD"):
        return None
    u = unfold(text)
    version = re.search(r"^VERSION:(\S+)", u, re.M | re.I)
    uid = re.search(r"^UID[;:][^\r\n]*", u, re.M | re.I)
    if not version or version.group(1) not in ("3.0", "4.0") or not uid or not re.search(r"^FN[;:]", u, re.M | re.I):
        return None
    uid_value = uid.group(0).split(":", 1)[1].strip()
    if not uid_value or uid_value in uids or "/" in uid_value:
        return None
    return version.group(1), uid_value, text

if corpus:
    candidates = []
    for root, _, files in os.walk(corpus):
        for f in sorted(files):
            if f.endswith(".vcf"):
                candidates.append(os.path.join(root, f))
    scored = []
    for path in sorted(candidates):
        if "bad" in os.path.basename(path).lower() or "invalid" in path.lower():
            continue
        with open(path, "rb") as fh:
            raw = fh.read()
        if len(raw) > 300_000:
            continue
        r = ok(raw)
        if not r:
            continue
        version, uid, text = r
        score = (("PHOTO" in text) * 2 + any(ord(c) > 127 for c in text) * 2
                 + ("KIND" in text.upper()) * 2 + (version == "4.0"))
        scored.append((-score, path, version, uid, text))
    scored.sort()
    v3 = [s for s in scored if s[2] == "3.0"]
    v4 = [s for s in scored if s[2] == "4.0"]
    for s in (v3[:9] + v4[:9]):
        if s[3] in uids:
            continue
        uids.add(s[3])
        picked.append(s)

photo = base64.b64encode(bytes([0xFF, 0xD8, 0xFF, 0xE0]) + os.urandom(30_000)).decode()
def fold(line):
    parts, width = [], 75
    while line:
        parts.append(line[:width]); line = line[width:]; width = 74
    return "\r\n ".join(parts)
generated = [
    ("3.0", "gen-3-umlaut", "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:gen-3-umlaut\r\nFN:Jürgen Groß\r\nN:Groß;Jürgen;;;\r\nEMAIL;TYPE=INTERNET:jg@example.de\r\nitem1.TEL:+49 89 1234\r\nitem1.X-ABLabel:Büro\r\nEND:VCARD\r\n"),
    ("4.0", "gen-4-photo", "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:gen-4-photo\r\nFN:Zoë Ångström\r\nN:Ångström;Zoë;;;\r\n" + fold("PHOTO:data:image/jpeg;base64," + photo) + "\r\nEND:VCARD\r\n"),
    ("4.0", "gen-4-group", "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:gen-4-group\r\nFN:Chor\r\nKIND:group\r\nMEMBER:urn:uuid:gen-3-umlaut\r\nEND:VCARD\r\n"),
    ("3.0", "gen-3-applegroup", "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:gen-3-applegroup\r\nFN:Nachbarn\r\nN:Nachbarn;;;;\r\nX-ADDRESSBOOKSERVER-KIND:group\r\nX-ADDRESSBOOKSERVER-MEMBER:urn:uuid:gen-3-umlaut\r\nEND:VCARD\r\n"),
    ("3.0", "gen-3-cjk", "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:gen-3-cjk\r\nFN:山田 太郎\r\nN:山田;太郎;;;\r\nNOTE:日本語のメモ\r\nEND:VCARD\r\n"),
]
i = 0
for version, uid, text in generated:
    picked.append((0, "generated", version, uid, text))
    uids.add(uid)
while len(picked) < 20:
    uid = f"gen-filler-{i}"
    i += 1
    version = "3.0" if i % 2 else "4.0"
    n = "N:Łódź;Ewa;;;\r\n" if version == "3.0" else ""
    picked.append((0, "generated", version, uid,
                   f"BEGIN:VCARD\r\nVERSION:{version}\r\nUID:{uid}\r\nFN:Ewa Łódź {i}\r\n{n}TEL:+48 22 {i:04d}\r\nEND:VCARD\r\n"))
for n, (_, _, _, uid, text) in enumerate(picked[:24]):
    name = re.sub(r"[^A-Za-z0-9._-]", "_", uid)[:60] or f"card{n}"
    with open(os.path.join(out, f"{name}.vcf"), "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
chosen = picked[:24]
v3 = sum(1 for p in chosen if p[2] == "3.0")
photos = sum(1 for p in chosen if "PHOTO" in p[4].upper())
non_ascii = sum(1 for p in chosen if any(ord(c) > 127 for c in p[4]))
groups = sum(1 for p in chosen if re.search(r"^(X-ADDRESSBOOKSERVER-)?KIND:group", unfold(p[4]), re.M | re.I))
from_corpus = sum(1 for p in chosen if p[1] != "generated")
print(f"local cards: {len(chosen)} ({from_corpus} from the corpus; {v3} vCard 3.0, {len(chosen) - v3} vCard 4.0, "
      f"{non_ascii} non-ASCII, {photos} with photos, {groups} groups)")
PY

# --- helpers --------------------------------------------------------------------------------------------
# Compares the local folder with the server: the same UIDs, the same content (line ends and folding aside).
cat > "$work/agree.py" <<'PY'
import base64, os, re, ssl, sys, urllib.request, urllib.parse
import xml.etree.ElementTree as ET
base, cert, user, pw, book = (os.environ[k] for k in ("KV_BASE", "KV_CERT", "KV_USER", "KV_PASSWORD", "KV_BOOK"))
ctx = ssl.create_default_context(cafile=cert)
auth = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

def request(method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, method=method, headers={"Authorization": auth, **(headers or {})})
    with urllib.request.urlopen(req, context=ctx) as r:
        return r.read()

def norm(text):
    t = re.sub(r"\r?\n[ \t]", "", text.replace("\r\n", "\n"))
    return "\n".join(l.rstrip() for l in t.strip().split("\n"))

def uid_of(text):
    m = re.search(r"^UID[^:\n]*:(.*)$", norm(text), re.M | re.I)
    return m.group(1).strip() if m else None

def remote():
    """uid -> (href, etag, text) for every card of the book."""
    ms = ET.fromstring(request("PROPFIND", book, b'<propfind xmlns="DAV:"><prop><getetag/></prop></propfind>', {"Depth": "1"}))
    out = {}
    for r in ms.findall("{DAV:}response"):
        href = r.findtext("{DAV:}href")
        if href.endswith("/"):
            continue
        etag = r.findtext(".//{DAV:}getetag")
        text = request("GET", href).decode("utf-8")
        uid = uid_of(text)
        if uid in out:
            sys.exit(f"duplicate UID {uid} on the server")
        out[uid] = (href, etag, text)
    return out

def local(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".vcf"):
            with open(os.path.join(folder, f), encoding="utf-8", newline="") as fh:
                text = fh.read()
            uid = uid_of(text)
            if uid in out:
                sys.exit(f"duplicate UID {uid} locally")
            out[uid] = (f, text)
    return out

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "agree":
        step, folder, expect = sys.argv[2], sys.argv[3], int(sys.argv[4])
        r, l = remote(), local(folder)
        problems = []
        if set(r) != set(l):
            problems.append(f"only on the server: {sorted(set(r) - set(l))}; only locally: {sorted(set(l) - set(r))}")
        for uid in sorted(set(r) & set(l)):
            if norm(r[uid][2]) != norm(l[uid][1]):
                problems.append(f"{uid}: content differs ({r[uid][0]} vs {l[uid][0]})")
        if len(r) != expect:
            problems.append(f"expected {expect} cards, the server has {len(r)}")
        for extra in sys.argv[5:]:
            uid, needle = extra.split("=", 1)
            if uid not in r or needle not in r[uid][2]:
                problems.append(f"{uid}: expected {needle!r} on the server")
            if uid not in l or needle not in l[uid][1]:
                problems.append(f"{uid}: expected {needle!r} locally")
        if problems:
            print(f"{step}: the two sides disagree:\n  " + "\n  ".join(problems))
            sys.exit(1)
        print(f"{step}: both sides agree on {len(r)} cards")
    elif cmd == "remote":
        # uid href etag, one line each
        for uid, (href, etag, _) in sorted(remote().items()):
            print(f"{uid}\t{href}\t{etag}")
    elif cmd == "uids":
        for uid in sorted(local(sys.argv[2])):
            print(uid)
    elif cmd == "file":
        print(os.path.join(sys.argv[2], local(sys.argv[2])[sys.argv[3]][0]))
    elif cmd == "edit":
        # Adds a NOTE before END:VCARD of the file or stdin text; writes to stdout.
        text = open(sys.argv[2], encoding="utf-8", newline="").read()
        nl = "\r\n" if "\r\n" in text else "\n"
        i = text.rstrip().rfind("END:VCARD")
        sys.stdout.write(text[:i] + f"NOTE:{sys.argv[3]}{nl}" + text[i:])
PY
agree() {
  local step=$1 expect=$2; shift 2
  python3 "$work/agree.py" agree "$step" "$work/local/contacts" "$expect" "$@" || fail "step '$step'"
}
sync() { vdirsyncer -c "$work/vdirsyncer.conf" sync >>"$work/vdirsyncer.log" 2>&1 || fail "vdirsyncer sync ($1)"; }
remote_line() { python3 "$work/agree.py" remote | awk -F'\t' -v u="$1" '$1 == u'; }
# Remote edit with curl: GET, add a NOTE, PUT with If-Match.
remote_edit() {
  local uid=$1 note=$2 line href etag
  line=$(remote_line "$uid"); [ -n "$line" ] || fail "no remote card $uid"
  href=$(cut -f2 <<<"$line"); etag=$(cut -f3 <<<"$line")
  curl -sf --cacert "$cert" -u "$user:$password" -o "$work/remote.vcf" "$base$href" || fail "GET $href"
  python3 "$work/agree.py" edit "$work/remote.vcf" "$note" >"$work/remote-edited.vcf"
  local code
  code=$(curl -s --cacert "$cert" -u "$user:$password" -o /dev/null -w '%{http_code}' -X PUT \
    -H "If-Match: $etag" -H "Content-Type: text/vcard; charset=utf-8" --data-binary @"$work/remote-edited.vcf" "$base$href")
  [ "$code" = 204 ] || fail "remote PUT $href answered $code"
}
remote_delete() {
  local line href etag code
  line=$(remote_line "$1"); [ -n "$line" ] || fail "no remote card $1"
  href=$(cut -f2 <<<"$line"); etag=$(cut -f3 <<<"$line")
  code=$(curl -s --cacert "$cert" -u "$user:$password" -o /dev/null -w '%{http_code}' -X DELETE -H "If-Match: $etag" "$base$href")
  [ "$code" = 204 ] || fail "remote DELETE $href answered $code"
}
local_file() { python3 "$work/agree.py" file "$work/local/contacts" "$1"; }
local_edit() {
  local f; f=$(local_file "$1"); [ -n "$f" ] || fail "no local card $1"
  python3 "$work/agree.py" edit "$f" "$2" >"$f.new" && mv "$f.new" "$f"
}

cat > "$work/vdirsyncer.conf" <<CONF
[general]
status_path = "$work/status/"

[pair kartei]
a = "kartei_local"
b = "kartei_remote"
collections = ["from a", "from b"]
conflict_resolution = "a wins"

[storage kartei_local]
type = "filesystem"
path = "$work/local/"
fileext = ".vcf"

[storage kartei_remote]
type = "carddav"
url = "$base/"
username = "$user"
password = "$password"
verify = "$cert"
CONF

# --- 1. discover and the initial upload ----------------------------------------------------------------
total=$(ls "$work/local/contacts/"*.vcf | wc -l)
{ yes || true; } | vdirsyncer -c "$work/vdirsyncer.conf" discover >>"$work/vdirsyncer.log" 2>&1 || fail "vdirsyncer discover"
sync "initial upload"
agree "initial upload" "$total"
mapfile -t all < <(python3 "$work/agree.py" uids "$work/local/contacts")

# --- 2. local edits ------------------------------------------------------------------------------------
local_edits=0
for uid in "${all[@]:0:3}"; do local_edit "$uid" "edited locally"; local_edits=$((local_edits + 1)); done
sync "local edits"
agree "local edits" "$total" "${all[0]}=edited locally"

# --- 3. remote edits (curl PUT with If-Match) and a card created on the server ---------------------------
remote_edits=0
for uid in "${all[@]:3:3}"; do remote_edit "$uid" "edited on the server"; remote_edits=$((remote_edits + 1)); done
new=$'BEGIN:VCARD\r\nVERSION:4.0\r\nUID:made-on-the-server\r\nFN:Server Neu\r\nEMAIL:neu@example.org\r\nEND:VCARD\r\n'
code=$(curl -s --cacert "$cert" -u "$user:$password" -o /dev/null -w '%{http_code}' -X PUT -H "If-None-Match: *" \
  -H "Content-Type: text/vcard; charset=utf-8" --data-binary "$new" "$base${book}made-on-the-server.vcf")
[ "$code" = 201 ] || fail "remote create answered $code"
total=$((total + 1))
sync "remote edits"
agree "remote edits" "$total" "${all[3]}=edited on the server" "made-on-the-server=Server Neu"

# --- 4. deletions on both sides ------------------------------------------------------------------------
for uid in "${all[@]:6:2}"; do rm "$(local_file "$uid")"; done
for uid in "${all[@]:8:2}"; do remote_delete "$uid"; done
total=$((total - 4))
sync "deletions"
agree "deletions" "$total"

# --- 5. a conflict: both sides edit the same card; "a wins" keeps the local version ------------------------
victim=${all[10]}
local_edit "$victim" "conflict: local version"
remote_edit "$victim" "conflict: server version"
sync "conflict"
agree "conflict" "$total" "$victim=conflict: local version"
if python3 - "$work/local/contacts" "$victim" <<'PY'
import os, sys
for f in os.listdir(sys.argv[1]):
    t = open(os.path.join(sys.argv[1], f), encoding="utf-8").read()
    if "conflict: server version" in t:
        sys.exit(0)
sys.exit(1)
PY
then fail "the server's side of the conflict survived although a wins"; fi

# --- 6. a second sync changes nothing ----------------------------------------------------------------
before=$(python3 "$work/agree.py" remote | md5sum)
sync "idle"
agree "idle" "$total"
[ "$before" = "$(python3 "$work/agree.py" remote | md5sum)" ] || fail "an idle sync changed the server"

elapsed=$(( $(date +%s) - started ))
echo "vdirsyncer $(vdirsyncer --version 2>/dev/null | awk '{print $NF}'): ${#all[@]} cards uploaded, $local_edits local edits, $remote_edits remote edits + 1 created on the server, 4 deletions (2 local, 2 remote), 1 conflict (a wins); both sides agree on $total cards after 6 syncs, ${elapsed}s"
