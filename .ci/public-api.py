#!/usr/bin/env python3
"""The public API of the library crates (kcl-lease, kcl-core), as a sorted text snapshot.

Why: a change of the public API must be deliberate. CI regenerates the snapshot and fails when
it differs from the one checked in under api/ (a removed or changed item is a breaking change:
note it in CHANGELOG.md; then run this script with --bless to accept it).

How: rustdoc's JSON output (`cargo rustdoc -- --output-format json`, unstable on the stable
toolchain, hence RUSTC_BOOTSTRAP=1 for this one command), walked from the crate root through
public modules and re-exports. One line per item: its kind, path and signature (functions and
methods with their parameter and return types, struct fields with their types, enum variants,
trait items, the traits each public type implements), plus `#[non_exhaustive]` where set.

Not kcl-tools: it is published for its binaries (`cargo install kcl-tools`); its library is
their shared internals (its lib.rs says so), with no stability promise to snapshot.

Usage: .ci/public-api.py [--bless]   (from the workspace root)
"""

import json
import os
import subprocess
import sys

CRATES = ["kcl-lease", "kcl-core"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_json(crate):
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    subprocess.run(
        ["cargo", "rustdoc", "-q", "-p", crate, "--all-features", "--",
         "-Z", "unstable-options", "--output-format", "json"],
        cwd=ROOT, env=env, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    with open(os.path.join(target, "doc", crate.replace("-", "_") + ".json")) as f:
        return json.load(f)


class Api:
    def __init__(self, doc):
        self.doc = doc
        self.index = doc["index"]
        self.lines = set()
        self.seen = set()

    # --- types -------------------------------------------------------------------------
    def ty(self, t):
        if t is None:
            return "()"
        if not isinstance(t, dict):
            return str(t)
        (kind, v), = t.items()
        if kind == "resolved_path":
            return v["path"] + self.args(v.get("args"))
        if kind == "primitive":
            return v
        if kind == "generic":
            return v
        if kind == "borrowed_ref":
            lt = f"'{v['lifetime'].lstrip(chr(39))} " if v.get("lifetime") else ""
            return "&" + lt + ("mut " if v.get("is_mutable") else "") + self.ty(v["type"])
        if kind == "raw_pointer":
            return ("*mut " if v.get("is_mutable") else "*const ") + self.ty(v["type"])
        if kind == "tuple":
            return "(" + ", ".join(self.ty(x) for x in v) + ")"
        if kind == "slice":
            return "[" + self.ty(v) + "]"
        if kind == "array":
            return "[" + self.ty(v["type"]) + "; " + str(v["len"]) + "]"
        if kind == "impl_trait":
            return "impl " + " + ".join(self.bound(b) for b in v)
        if kind == "dyn_trait":
            parts = [self.path(x["trait"]) for x in v["traits"]]
            if v.get("lifetime"):
                parts.append(v["lifetime"])
            return "dyn " + " + ".join(parts)
        if kind == "qualified_path":
            trait = self.path(v["trait"]) if v.get("trait") else "?"
            return f"<{self.ty(v['self_type'])} as {trait}>::{v['name']}"
        if kind == "function_pointer":
            sig = v.get("sig", {})
            ins = ", ".join(self.ty(i[1]) for i in sig.get("inputs", []))
            return f"fn({ins}) -> {self.ty(sig.get('output'))}"
        return kind

    def path(self, p):
        return p["path"] + self.args(p.get("args"))

    def args(self, a):
        if not a:
            return ""
        if "angle_bracketed" in a:
            ab = a["angle_bracketed"]
            out = []
            for x in ab.get("args", []):
                (k, v), = x.items()
                out.append(self.ty(v) if k == "type" else str(v))
            for c in ab.get("constraints", []):
                binding = c.get("binding", {})
                if "equality" in binding:
                    eq = binding["equality"]
                    out.append(f"{c['name']} = {self.ty(eq.get('type', eq))}")
                else:
                    out.append(f"{c['name']}: " + " + ".join(self.bound(b) for b in binding.get("constraint", [])))
            return "<" + ", ".join(out) + ">" if out else ""
        if "parenthesized" in a:
            p = a["parenthesized"]
            return "(" + ", ".join(self.ty(x) for x in p.get("inputs", [])) + ") -> " + self.ty(p.get("output"))
        return ""

    def bound(self, b):
        if "trait_bound" in b:
            tb = b["trait_bound"]
            mod = "?" if tb.get("modifier") == "maybe" else ""
            return mod + self.path(tb["trait"])
        if "outlives" in b:
            return b["outlives"]
        return "?"

    def generics(self, g):
        params, where = self.generic_parts(g)
        return params + where

    def generic_parts(self, g):
        params = []
        for p in g.get("params", []):
            kind = p["kind"]
            if "type" in kind:
                if kind["type"].get("is_synthetic"):
                    continue
                bounds = kind["type"].get("bounds", [])
                params.append(p["name"] + (": " + " + ".join(self.bound(b) for b in bounds) if bounds else ""))
            elif "lifetime" in kind:
                params.append(p["name"])
            elif "const" in kind:
                params.append("const " + p["name"] + ": " + self.ty(kind["const"]["type"]))
        where = []
        for w in g.get("where_predicates", []):
            if "bound_predicate" in w:
                bp = w["bound_predicate"]
                where.append(self.ty(bp["type"]) + ": " + " + ".join(self.bound(b) for b in bp.get("bounds", [])))
        return ("<" + ", ".join(params) + ">" if params else "",
                " where " + ", ".join(where) if where else "")

    def sig(self, name, f):
        header = f.get("header", {})
        prefix = ("async " if header.get("is_async") else "") + ("unsafe " if header.get("is_unsafe") else "")
        ins = ", ".join(self.param(n, t) for n, t in f["sig"]["inputs"])
        out = f["sig"].get("output")
        ret = f" -> {self.ty(out)}" if out is not None else ""
        params, where = self.generic_parts(f.get("generics", {}))
        return f"{prefix}{name}{params}({ins}){ret}{where}"

    def param(self, name, t):
        if name == "self":
            if t == {"generic": "Self"}:
                return "self"
            if isinstance(t, dict) and "borrowed_ref" in t and t["borrowed_ref"]["type"] == {"generic": "Self"}:
                return "&mut self" if t["borrowed_ref"].get("is_mutable") else "&self"
        return f"{name}: {self.ty(t)}"

    # --- items -------------------------------------------------------------------------
    def attrs(self, item):
        return " #[non_exhaustive]" if "non_exhaustive" in json.dumps(item.get("attrs", [])) else ""

    def add(self, line):
        self.lines.add(line)

    def walk_module(self, item, path):
        for child_id in item["inner"]["module"]["items"]:
            self.walk(str(child_id), path)

    def walk(self, item_id, parent):
        item = self.index.get(item_id)
        if item is None or item.get("visibility") != "public":
            return
        (kind, inner), = item["inner"].items()
        if kind == "use":
            target = inner.get("id")
            name = inner["name"]
            if inner.get("is_glob"):
                self.add(f"use {parent}::{inner['source']}::*")
                return
            if target is None or str(target) not in self.index:
                self.add(f"use {parent}::{name} = {inner['source']}")
                return
            self.walk_named(str(target), parent, name)
            return
        self.walk_named(item_id, parent, item["name"])

    def walk_named(self, item_id, parent, name):
        item = self.index[item_id]
        path = f"{parent}::{name}"
        key = (item_id, path)
        if key in self.seen:
            return
        self.seen.add(key)
        (kind, inner), = item["inner"].items()
        nx = self.attrs(item)
        if kind == "module":
            self.add(f"mod {path}")
            self.walk_module(item, path)
        elif kind == "struct":
            self.add(f"struct {path}{self.generics(inner.get('generics', {}))}{nx}")
            k = inner["kind"]
            if isinstance(k, dict) and "plain" in k:
                for fid in k["plain"]["fields"]:
                    f = self.index.get(str(fid))
                    if f and f.get("visibility") == "public":
                        self.add(f"field {path}.{f['name']}: {self.ty(f['inner']['struct_field'])}")
            elif isinstance(k, dict) and "tuple" in k:
                for i, fid in enumerate(k["tuple"]):
                    f = self.index.get(str(fid)) if fid is not None else None
                    if f and f.get("visibility") == "public":
                        self.add(f"field {path}.{i}: {self.ty(f['inner']['struct_field'])}")
            self.impls(path, inner.get("impls", []))
        elif kind == "enum":
            self.add(f"enum {path}{self.generics(inner.get('generics', {}))}{nx}")
            for vid in inner["variants"]:
                v = self.index[str(vid)]
                vk = v["inner"]["variant"]["kind"]
                shape = ""
                if isinstance(vk, dict) and "tuple" in vk:
                    shape = "(" + ", ".join(
                        self.ty(self.index[str(f)]["inner"]["struct_field"]) if f is not None else "_"
                        for f in vk["tuple"]) + ")"
                elif isinstance(vk, dict) and "struct" in vk:
                    shape = " { " + ", ".join(
                        f"{self.index[str(f)]['name']}: {self.ty(self.index[str(f)]['inner']['struct_field'])}"
                        for f in vk["struct"]["fields"]) + " }"
                self.add(f"variant {path}::{v['name']}{shape}{self.attrs(v)}")
            self.impls(path, inner.get("impls", []))
        elif kind == "function":
            self.add(f"fn {parent}::{self.sig(name, inner)}")  # e.g. fn kcl_core::x::name(..)
        elif kind == "trait":
            self.add(f"trait {path}{self.generics(inner.get('generics', {}))}")
            for tid in inner["items"]:
                self.member(path, self.index[str(tid)], "trait-item")
        elif kind == "constant":
            self.add(f"const {path}: {self.ty(inner['type'])}")
        elif kind == "static":
            self.add(f"static {path}: {self.ty(inner['type'])}")
        elif kind == "type_alias":
            self.add(f"type {path}{self.generics(inner.get('generics', {}))} = {self.ty(inner['type'])}")
        elif kind in ("macro", "proc_macro"):
            self.add(f"macro {path}")
        else:
            self.add(f"{kind} {path}")

    def member(self, owner, item, what):
        (kind, inner), = item["inner"].items()
        if kind == "function":
            self.add(f"{what} {owner}::{self.sig(item['name'], inner)}")
        elif kind == "assoc_type":
            self.add(f"{what} {owner}::type {item['name']}")
        elif kind == "assoc_const":
            self.add(f"{what} {owner}::const {item['name']}: {self.ty(inner.get('type'))}")

    def impls(self, path, impl_ids):
        for iid in impl_ids:
            imp = self.index.get(str(iid))
            if imp is None:
                continue
            inner = imp["inner"]["impl"]
            if inner.get("is_synthetic") or inner.get("blanket_impl") is not None:
                continue
            if inner.get("trait") is None:
                for mid in inner["items"]:
                    m = self.index.get(str(mid))
                    if m and m.get("visibility") == "public":
                        self.member(path, m, "method")
            else:
                neg = "!" if inner.get("is_negative") else ""
                self.add(f"impl {neg}{self.path(inner['trait'])} for {path}")


def snapshot(crate):
    doc = build_json(crate)
    api = Api(doc)
    root = api.index[str(doc["root"])]
    name = root["name"]
    api.add(f"crate {name}")
    api.walk_module(root, name)
    return "".join(line + "\n" for line in sorted(api.lines))


def main():
    bless = "--bless" in sys.argv[1:]
    failed = False
    for crate in CRATES:
        text = snapshot(crate)
        path = os.path.join(ROOT, "api", crate + ".txt")
        items = sum(1 for line in text.splitlines() if line.split(" ", 1)[0] in
                    ("struct", "enum", "fn", "trait", "const", "static", "type", "macro"))
        members = len(text.splitlines())
        if bless:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            print(f"{crate}: {items} items, {members} lines written to api/{crate}.txt")
            continue
        try:
            with open(path) as f:
                old = f.read()
        except FileNotFoundError:
            old = ""
        if old != text:
            failed = True
            old_lines, new_lines = set(old.splitlines()), set(text.splitlines())
            print(f"{crate}: the public API differs from api/{crate}.txt:")
            for line in sorted(old_lines - new_lines):
                print(f"  - {line}")
            for line in sorted(new_lines - old_lines):
                print(f"  + {line}")
        else:
            print(f"ok: {crate}: public API as in api/{crate}.txt ({items} items, {members} lines)")
    if failed:
        print("A deliberate change: note it in CHANGELOG.md, then run .ci/public-api.py --bless.")
        sys.exit(1)


if __name__ == "__main__":
    main()
