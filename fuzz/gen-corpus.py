#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, made from the conformance traces and
from the string literals of core's unit tests (users/assign and .qmail
examples, messages).

    python3 fuzz/gen-corpus.py            # writes fuzz/corpus/<target>/

fuzz/corpus is git-ignored: the seeds are made, not committed. The
smtp_server encoding must match ALPHABET in fuzz_targets/smtp_server.rs;
the input layouts of the other targets are described at the top of each
fuzz_targets/<target>.rs, and the scheduler's op encoding must match
`Host::step` in fuzz_targets/scheduler.rs.
"""
import hashlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent
TRACES = ROOT.parent / "conformance" / "traces" / "smtp"
CLIENT_TRACES = ROOT.parent / "conformance" / "traces" / "smtp-client"
CORE = ROOT.parent / "core" / "src"
CORPUS = ROOT / "corpus"

ALPHABET = [
    b"EHLO bar.com\r\n", b"HELO bar.com\r\n", b"MAIL FROM:<a@bar.com>", b"MAIL FROM:<>",
    b"RCPT TO:<b@foo.com>", b"RCPT TO:<x@elsewhere.example>", b"RCPT TO:<postmaster>",
    b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"VRFY x\r\n", b"HELP\r\n",
    b" SIZE=", b" BODY=8BITMIME", b" BODY=BINARYMIME", b"\r\n", b"\r\n.\r\n", b"\n.\n",
    b"\r.\r", b"Received: x\r\n", b"Subject: s\r\n\r\n", b"<@foo.com:", b"%elsewhere.example",
    b"@foo.com>", b"@[127.0.0.1]>", b'"q u"', b"AUTH=<>",
    b"x" * 64, b"MAIL", b"RCPT", b"FROM:", b"TO:", b"1000",
]
FLUSH = 0xFF


def unescape(text):
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        i += 1
        if c != "\\":
            out += c.encode()
            continue
        e = text[i]
        i += 1
        if e in "rnt0\\":
            out += {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}[e]
        elif e == "x":
            out.append(int(text[i:i + 2], 16))
            i += 2
        elif e == "{":
            end = text.index("}", i)
            n, what = text[i:end].split("*", 1)
            out += what.encode() * min(int(n), 4096)
            i = end + 1
    return bytes(out)


def client_writes(path):
    """The trace's client writes, consecutive C lines merged."""
    writes, cur = [], None
    for line in path.read_text().splitlines():
        m = re.match(r"C(\*(\d+))?: ?(.*)$", line)
        raw = re.match(r"C~ ?(.*)$", line)
        if m or raw:
            if cur is None:
                cur = bytearray()
            if raw:
                cur += unescape(raw.group(1))
            else:
                cur += (m.group(3).encode() + b"\r\n") * min(int(m.group(2) or 1), 200)
        elif line.strip() and not line.startswith("#") and cur is not None:
            writes.append(bytes(cur))
            cur = None
    if cur is not None:
        writes.append(bytes(cur))
    return writes


def client_seed(path):
    """A client trace as smtp_client's input: a configuration byte, the
    last @body, then the server's writes (consecutive S lines merged, `W:`
    an empty write), each after 0xFF. `S: closed` ends the input."""
    config, body, writes, cur = 0, b"Subject: test\n\nhello\n", [], None
    for line in path.read_text().splitlines():
        if line.startswith("@mail"):
            config |= (1 if len(line.split()) > 3 else 0) | (2 if " 8bit" in line else 0)
        elif line.startswith("@body "):
            body = unescape(line[6:])
        s, raw = re.match(r"S: ?(.*)$", line), re.match(r"S~ ?(.*)$", line)
        if (s and s.group(1) != "closed") or raw:
            cur = bytearray() if cur is None else cur
            cur += unescape(raw.group(1)) if raw else s.group(1).encode() + b"\r\n"
            continue
        if line.strip() and not line.startswith(("#", "@")) and cur is not None:
            writes.append(bytes(cur))
            cur = None
        if line.startswith("W:"):
            writes.append(b"")
    if cur is not None:
        writes.append(bytes(cur))
    return bytes([config]) + body.replace(b"\xff", b"") + b"".join(b"\xff" + w for w in writes)


def directives(path):
    return dict(
        (l[1:].split(" ", 1) + [""])[:2] for l in path.read_text().splitlines() if l.startswith("@")
    )


def encode_program(writes):
    """Greedy longest-token encoding over the alphabet; 0xFF between writes."""
    order = sorted(range(len(ALPHABET)), key=lambda i: -len(ALPHABET[i]))
    out = bytearray()
    for n, w in enumerate(writes):
        if n:
            out.append(FLUSH)
        i = 0
        while i < len(w):
            for t in order:
                if w.startswith(ALPHABET[t], i):
                    out.append(0x80 + t)
                    i += len(ALPHABET[t])
                    break
            else:
                b = w[i]
                if 0x80 <= b < 0x80 + len(ALPHABET) or b == FLUSH:
                    b = ord("?")  # cannot be written raw in this encoding
                out.append(b)
                i += 1
    return bytes(out)


def save(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def rust_literals(path):
    """The (byte) string literals of a Rust file, unescaped."""
    text = re.sub(r"'(?:[^'\\\n]|\\.)'", "", path.read_text())  # char literals
    out = []
    for m in re.finditer(r'(?<![A-Za-z0-9_])b?"((?:[^"\\]|\\.|\\\n)*)"', text, re.S):
        body, res, i = m.group(1), bytearray(), 0
        while i < len(body):
            c = body[i]
            i += 1
            if c != "\\":
                res += c.encode()
                continue
            e = body[i]
            i += 1
            if e == "\n":
                while i < len(body) and body[i] in " \t\n":
                    i += 1
            elif e in 'nrt0\\"\'':
                res += {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0", "\\": b"\\",
                        '"': b'"', "'": b"'"}[e]
            elif e == "x":
                res.append(int(body[i:i + 2], 16))
                i += 2
            elif e == "u":
                end = body.index("}", i)
                res += chr(int(body[i + 1:end], 16)).encode()
                i = end + 1
        out.append(bytes(res))
    return out


def assign_seeds():
    lits = rust_literals(CORE / "assign_tests.rs")
    texts = [l for l in lits if l[:1] in (b"=", b"+", b".") or b"\\n." in l or b"\n." in l]
    queries = [b"ftp", b"ftp-something", b"ftpstuff", b"FTP", b"other", b"abCD", b"aX", b"", b"x"]
    for t in texts:
        save("assign", t)
        save("assign", t + b"".join(b"\xff" + q for q in queries))
    save("assign", b"+Ab:u:3:4:/u:-:x-:\n+aB:v:5:6:/v:-::\n=ab:w:7:8:/w:-::\n.\n\xffab\xffAB\xffabC\xffaBc")


def dotqmail_seeds():
    lits = rust_literals(CORE / "dotqmail_tests.rs")
    for l in lits:
        save("dotqmail", l)
    save("dotqmail", b"# vacation\n|exit 99\n&peter@isp.com.au\n/home/p/Mailbox\n./Maildir/\n+list\n")
    save("dotqmail", b"-\0Foo.Bar-baz\0mx.mail.example.com\0a b@x.org\0X: y\nDelivered-To: a@b\n\nbody\n")
    save("dotqmail", b"-\0a-b-\0h.example\0\0From x\n>From y\n")
    save("dotqmail", b"./M/\0x-default\0a.b.c.d\0#@[]\0Delivered-To: -x-default@a.b.c.d\n")


INJECT_ENV = [
    b"",
    b"QMAILUSER=joe\nQMAILHOST=corp\nQMAILNAME=Joe Q. User\nNOW=811485414\nPID=42",
    b"MAILUSER=list\nQMAILSHOST=lists.example.com\nQMAILINJECT=cr\nNAME=Joe",
    b"USER=u\nQMAILINJECT=fism\nQMAILIDHOST=idh\nQMAILDEFAULTDOMAIN=dd.org\nNOW=-1",
]
INJECT_CONTROLS = b"me=mail\ndefaulthost=mail\ndefaultdomain=example.org\nplusdomain=plus.example.org\nidhost=id.example.org"


def inject_seeds():
    msgs = [l for l in rust_literals(CORE / "inject" / "tests.rs") if b":" in l and b"\n" in l]
    msgs += [b"", b"\n", b"Subject: x\n\nbody\n", b"From x Mon\nSubject: a\n b\n\nbody",
             b"To: a@x.y, B <b@x.y>\nCc: grp: c@x.y;\nBcc: d@x.y\n\nhi\n"]
    for n, m in enumerate(msgs):
        opts = [0, 1, 2, 3, 4 | 8, 16][n % 6]
        env = INJECT_ENV[n % len(INJECT_ENV)]
        args = [b"", b"bob", b"x@y.z\nr@x.y", b"a@(b"][n % 4]
        sender = [b"bounces", b"", b"a b@c"][n % 3]
        save("inject", bytes([opts]) + b"\0".join([env, INJECT_CONTROLS, args, sender, b"list@x.y", m]))


def bounce_seeds():
    def seed(sender, message_len=19, max_bytes=None, failures=None, dbto=b"postmaster"):
        head = message_len.to_bytes(8, "little") + (max_bytes or 0).to_bytes(8, "little")
        head += bytes([1 if max_bytes is not None else 0])
        failures = failures or [(b"joe@example.org", b"Sorry, no mailbox here by that name. (#5.1.1)\n"),
                                (b"bob@example.org", b"first\n\nsecond")]
        strings = [sender, b"26 Sep 1995 04:46:54 -0000", b"MAILER-DAEMON", b"mx.example.org", dbto,
                   b"example.org"] + [x for f in failures for x in f]
        save("bounce", head + b"\0".join(strings))
    seed(b"alice@example.com")
    seed(b"")
    seed(b"", dbto=b"")
    seed(b"#@[]")
    seed(b"list-@example.com-@[]", max_bytes=5)
    seed(b"a@b", message_len=1000, max_bytes=1000)
    seed(b"a\nb@c", max_bytes=0, failures=[(b"a\nb", b"x\n\n\ny\n"), (b"c", b"\n"), (b"d", b"")])
    seed(b"mailer daemon@x", failures=[(b"r@x", b"busy\nI'm not going to try again; this message has been in the queue too long.\n")])


# The scheduler's ops (Host::step in fuzz_targets/scheduler.rs).
def s_new(id, sender_sel, rcpts, size=100):
    return bytes([0, id, sender_sel, len(rcpts)] + rcpts) + size.to_bytes(2, "little")


def s_confirm(k=0):
    return bytes([2, k])


def s_fail(k=0):
    return bytes([5, k])


def s_finish(k, outcome):  # outcome 0 success, 1 deferral, 2 failure
    return bytes([6, 3 * k + outcome])


def s_bounce(k=0, ok=True):
    return bytes([9, 2 * k + (0 if ok else 1)])


def s_advance(d, scale=0):  # scale 0: s, 1: min, 2: h
    return bytes([10]) + d.to_bytes(2, "little") + bytes([scale])


def s_crash(mask, r=0):
    return bytes([12]) + mask.to_bytes(8, "little") + bytes([r])


def s_toggle(c):
    return bytes([13, c])


def scheduler_seeds():
    cfg = bytes([1, 2, 2])  # concurrency 2/3, queuelifetime 3600
    confirm4 = s_confirm() * 4
    seeds = [
        # local + remote, all succeed
        s_new(1, 0, [0, 2]) + s_confirm() + s_finish(0, 0) + s_finish(0, 0) + confirm4,
        # failures, then the bounce goes
        s_new(2, 0, [0, 1]) + s_confirm() + s_finish(0, 2) + s_finish(0, 2) + confirm4 + s_bounce() + confirm4,
        # a bounce's bounce and a double bounce's
        s_new(3, 1, [3]) + s_confirm() + s_finish(0, 2) + confirm4 + s_bounce(ok=False) + s_advance(60) + s_bounce()
        + s_new(4, 2, [4]) + s_confirm() + s_finish(0, 2) + confirm4,
        # deferrals over time, to dying
        s_new(5, 0, [0, 2, 5]) + s_confirm() + (s_finish(0, 1) * 3 + s_advance(10, 1)) * 8,
        # failed writes asked again
        s_new(6, 3, [0, 1, 2]) + s_fail() + s_advance(60) + s_confirm() + s_finish(1, 0) + s_fail() + s_advance(61)
        + confirm4,
        # crashes at every step
        s_new(7, 0, [0, 2]) + s_crash(0) + s_confirm() + s_finish(0, 0) + s_crash(1) + s_finish(0, 2)
        + s_crash(0xFFFF, 3) + confirm4 + s_bounce() + s_crash(0),
        # a held channel, then released
        s_toggle(1) + s_new(1, 0, [2, 3, 0]) + s_confirm() + s_advance(5, 2) + s_toggle(1) + s_finish(0, 0)
        + s_finish(1, 1) + confirm4,
        # ids reused after removal, odd recipients
        s_new(1, 0, []) + confirm4 + s_new(1, 0, [6, 7, 240, 3, ord("q"), ord("@")]) + s_confirm()
        + bytes([14]) + s_finish(0, 0) + confirm4,
    ]
    for n, ops in enumerate(seeds):
        save("scheduler", cfg + ops)
        save("scheduler", bytes([0, 0, n % 8 | 8]) + ops)


def main():
    for path in sorted(TRACES.glob("*.trace")):
        writes = client_writes(path)
        d = directives(path)
        config = 0
        if "databytes" in d:
            config |= 2
        if "relayclient" in d:
            config |= 4
        save("smtp_server", bytes([config]) + encode_program(writes))
        for w in writes:
            for line in w.split(b"\n"):
                line = line.rstrip(b"\r")
                save("smtp_command", line)
                for verb, kind in ((b"MAIL FROM:", 0), (b"RCPT TO:", 1)):
                    if line.upper().startswith(verb):
                        save("address", bytes([kind]) + line[len(verb):].lstrip())
            if b"\r\n.\r\n" in w or b"\n.\n" in w or b"\r.\r" in w:
                save("data_decoder", bytes([0, 7]) + w)
        files = [d.get("me", "mx.test.example"), "", "", d.get("rcpthosts", "").replace(" ", "\n"),
                 d.get("badmailfrom", "").replace(" ", "\n"), d.get("databytes", ""), d.get("timeout", "")]
        save("control", "\0".join(files).encode())
    for path in sorted(CLIENT_TRACES.glob("*.trace")):
        seed = client_seed(path)
        save("smtp_client", seed)
        # The host quitting early: after the greeting, after EHLO's reply,
        # after the first reply of the transaction.
        for at in (0, 1, 2):
            save("smtp_client", bytes([seed[0] | 8 | at << 4]) + seed[1:])
    for rules in [
        b"127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n\0127.0.0.1\0localhost\0\0",
        b"10.0.0.0/8:allow,RELAYCLIENT=\"@gw\"\n=.example.com:deny\n::1:allow\n\x0010.1.2.3\0a.example.com\0ident\0D\0+A=b\0",
        b"1.2.3.4-7:allow,X='y'\n# c\n1.2.:deny\n2001:db8::/32:allow,Y\n\x002001:db8::5\0\0\0+Y\0",
    ]:
        save("tcprules", rules)
    for env in [b"F\0\0", b"Fa@b.org\0Tc@d.org\0Te@f.org\0\0", b"u0\0p42\0Fa@b\0Tc@d\0", b"Fx\0Ty\0"]:
        save("queue_envelope", env)
    assign_seeds()
    dotqmail_seeds()
    inject_seeds()
    bounce_seeds()
    scheduler_seeds()
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(target, len(list((CORPUS / target).iterdir())))


if __name__ == "__main__":
    main()
