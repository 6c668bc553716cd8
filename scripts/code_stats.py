#!/usr/bin/env python3
"""Line counts and longest functions of the library sources (src/, include/) of a tree.

Usage: python3 scripts/code_stats.py [TREE]   (default: this checkout)
       TOP=N TOPF=M: how many files / functions to list (12 each).
Heuristic, no parser: comments and strings are blanked, then braces are counted;
namespace/class/struct/enum bodies do not count as functions, and a block opened
outside a function after a ')' (or 'const', 'override', a ctor initialiser list)
is a function. Used for the before/after figures of issue 14."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
files = []
for d in ("src", "include"):
    for dp, _, fs in os.walk(os.path.join(root, d)):
        for f in fs:
            if f.endswith((".cpp", ".h")):
                files.append(os.path.join(dp, f))
def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'/\*.*?\*/', lambda m: '\n' * m.group(0).count('\n'), text, flags=re.S)
    text = re.sub(r'R"\((.*?)\)"', lambda m: '""' + '\n' * m.group(0).count('\n'), text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\\n])*"', '""', text)
    text = re.sub(r"'(\\.|[^'\\\n])*'", "''", text)
    return text
funcs = []
sizes = []
for path in files:
    raw = open(path).read()
    rel = os.path.relpath(path, root)
    sizes.append((raw.count('\n'), rel))
    text = strip(raw)
    stack = []  # kinds: 'scope' (namespace/class) or 'func' or 'block'
    start = 0; head = ''; line = 1
    func_start = None
    for ch in text:
        if ch == '\n':
            line += 1
        if ch == '{':
            h = head.strip()
            in_func = any(isinstance(k, tuple) for k in stack)
            if not in_func and re.search(r'\b(namespace|class|struct|enum|union)\b[^()]*$', h) or (not in_func and h.endswith('extern "C"')):
                stack.append('scope')
            elif not in_func and re.search(r'\)\s*(const|override|final|noexcept|mutable|->[^{;]*|:[^;{]*)*\s*$', h, re.S):
                stack.append('func'); func_start = (line, h.split('\n')[-1][-80:])
                fl = line
                # find the name: last identifier before the first '(' of the head's last statement
                seg = re.split(r'[;}]', h)[-1]
                m = re.search(r'([~\w:]+)\s*\(', seg)
                fname = m.group(1) if m else '?'
                stack[-1] = ('func', fl, fname)
            else:
                stack.append('block')
            head = ''
        elif ch == '}':
            if stack:
                k = stack.pop()
                if isinstance(k, tuple):
                    funcs.append((line - k[1] + 1, f"{rel}:{k[1]}", k[2]))
            head = ''
        elif ch == ';':
            head = ''
        else:
            head += ch
sizes.sort(reverse=True)
print("total library lines:", sum(s for s, _ in sizes), "files:", len(sizes))
print("files over 500 lines:", [f"{r} ({s})" for s, r in sizes if s > 500])
for s, r in sizes[:int(os.environ.get("TOP", "12"))]:
    print(f"  {s:5d} {r}")
funcs.sort(reverse=True)
print("functions over 60 lines:", sum(1 for f in funcs if f[0] > 60))
for n, where, name in funcs[:int(os.environ.get("TOPF", "12"))]:
    print(f"  {n:4d} {name} ({where})")
