"""Helpers of .ci/package (standard library only; runs under any Python >= 3.10).

  readme-block TEXT          print the first fenced code block after the README line containing TEXT
  portable OBJ_DIR LIBRARY   fail unless every AVX/AVX2/AVX-512 instruction (a ymm or zmm register) in the object
                             files under OBJ_DIR lies in a runtime-dispatched clone (ad_fast::cpu::run_avx2 /
                             run_avx512, csrc/common/cpu_isa.h), zmm only in run_avx512, and the linked LIBRARY
                             holds no more of them than those clones
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
_FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")
# Names of the clones: demangled ("auto ad_fast::cpu::run_avx2<...>", the deduced return type first) or, where
# c++filt gives up on a deeply nested lambda type, still mangled (_ZN7ad_fast3cpu8run_avx2I...).
_ALLOWED = {
    "ymm": re.compile(r"^((auto )?ad_fast::cpu::run_avx(2|512)<|_ZN7ad_fast3cpu(8run_avx2|10run_avx512)I)"),
    "zmm": re.compile(r"^((auto )?ad_fast::cpu::run_avx512<|_ZN7ad_fast3cpu10run_avx512I)"),
}


def readme_block(text: str) -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if text in line)
    opening = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].startswith("```"))
    return "\n".join(lines[opening + 1:closing]) + "\n"


def _vector_instructions(path: pathlib.Path) -> dict[str, dict[str, int]]:
    """{register kind: {function: number of instructions using such a register}} of one binary."""
    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(path)], check=True,
                             capture_output=True, text=True).stdout
    counts: dict[str, dict[str, int]] = {"ymm": {}, "zmm": {}}
    function = "?"
    for line in listing.splitlines():
        match = _FUNCTION.match(line)
        if match:
            function = match.group(1)
            continue
        for kind in counts:
            if f"%{kind}" in line:
                counts[kind][function] = counts[kind].get(function, 0) + 1
    return counts


def portable(obj_dir: str, library: str) -> None:
    objects = sorted(pathlib.Path(obj_dir).rglob("*.o"))
    if not objects:
        sys.exit(f"portable: no object files under {obj_dir}")
    failures, in_clones = [], {"ymm": 0, "zmm": 0}
    for obj in objects:
        for kind, functions in _vector_instructions(obj).items():
            for function, count in functions.items():
                if _ALLOWED[kind].match(function):
                    in_clones[kind] += count
                else:
                    failures.append(f"{obj.name}: {count} {kind} instructions in {function[:160]}")
    in_library = {kind: sum(functions.values()) for kind, functions in _vector_instructions(pathlib.Path(library)).items()}
    print(f"portable: {len(objects)} objects; ymm/zmm instructions in dispatched clones {in_clones['ymm']}/"
          f"{in_clones['zmm']}; in {pathlib.Path(library).name} {in_library['ymm']}/{in_library['zmm']}")
    for kind in in_library:
        if in_library[kind] > in_clones[kind]:
            failures.append(f"{library}: {in_library[kind]} {kind} instructions, more than the {in_clones[kind]} "
                            f"of the dispatched clones: some come from outside them")
    if in_clones["zmm"] == 0:
        failures.append("no AVX-512 clone was compiled (ad_fast::cpu::run_avx512 holds no zmm instruction)")
    if failures:
        sys.exit("portable: vector instructions outside the runtime-dispatched clones:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "readme-block":
        sys.stdout.write(readme_block(*args))
    elif command == "portable":
        portable(*args)
    else:
        sys.exit(f"unknown command {command!r}")
