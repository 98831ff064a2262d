#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, made from the conformance traces.

    python3 fuzz/gen-corpus.py            # writes fuzz/corpus/<target>/

fuzz/corpus is git-ignored: the seeds are made, not committed. The
smtp_server encoding must match ALPHABET in fuzz_targets/smtp_server.rs.
"""
import hashlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent
TRACES = ROOT.parent / "conformance" / "traces" / "smtp"
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
    for rules in [
        b"127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n\0127.0.0.1\0localhost\0\0",
        b"10.0.0.0/8:allow,RELAYCLIENT=\"@gw\"\n=.example.com:deny\n::1:allow\n\x0010.1.2.3\0a.example.com\0ident\0D\0+A=b\0",
        b"1.2.3.4-7:allow,X='y'\n# c\n1.2.:deny\n2001:db8::/32:allow,Y\n\x002001:db8::5\0\0\0+Y\0",
    ]:
        save("tcprules", rules)
    for env in [b"F\0\0", b"Fa@b.org\0Tc@d.org\0Te@f.org\0\0", b"u0\0p42\0Fa@b\0Tc@d\0", b"Fx\0Ty\0"]:
        save("queue_envelope", env)
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(target, len(list((CORPUS / target).iterdir())))


if __name__ == "__main__":
    main()
