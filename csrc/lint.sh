#!/usr/bin/env bash
# Strict C lint of csrc/ (separate from the extension build: cffi's generated
# wrapper does not survive these flags).
set -euo pipefail
cd "$(dirname "$0")"
CC=${CC:-cc}
flags=(-std=gnu11 -fsyntax-only -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes
       -Wstrict-prototypes -Wswitch-enum -Wpointer-arith -Wcast-qual -Wwrite-strings
       -Wundef -Wformat=2 -Wnull-dereference -Wvla -Wimplicit-fallthrough
       -Wold-style-definition -Wredundant-decls -Wconversion -Wno-sign-conversion)
for f in *.c; do
    "$CC" "${flags[@]}" "$f"
done
# nsbox-init is built freestanding on x86_64/aarch64: lint that variant too.
case "$(uname -m)" in
    x86_64|aarch64) "$CC" "${flags[@]}" -DNSBOX_NOLIBC -ffreestanding -fno-builtin init.c ;;
esac
echo "csrc lint: $(ls *.c | wc -l) files clean"
