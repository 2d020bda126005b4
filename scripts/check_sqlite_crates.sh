#!/usr/bin/env bash
# The rusqlite / libsqlite3-sys versions a host must match are stated once, in
# docs/embedding.md ("The SQLite crates a host must match"); this checks that the example
# host (which depends on consensus-db by path and on rusqlite itself, as a host would)
# resolves to exactly one of each, and that they are the ones that page states.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree --locked --manifest-path examples/embed_host/Cargo.toml -e normal --prefix none)
fail=0
for crate in rusqlite libsqlite3-sys; do
    versions=$(grep -E "^$crate v" <<<"$tree" | awk '{print $2}' | sort -u)
    if [ "$(wc -l <<<"$versions")" -ne 1 ] || [ -z "$versions" ]; then
        echo "examples/embed_host resolves $crate to: ${versions:-nothing} (want exactly one)" >&2; fail=1; continue
    fi
    minor=$(sed -E 's/^v([0-9]+\.[0-9]+)\..*/\1/' <<<"$versions")
    if ! grep -qE "^\| \`$crate\` \| \`$minor(\.x)?\`" docs/embedding.md; then
        echo "docs/embedding.md's table does not state $crate $minor (the build resolves $versions)" >&2; fail=1; continue
    fi
    echo "$crate $versions: one copy, matches docs/embedding.md ($minor)"
done
exit $fail
