"""Write tests/support/asyncapi/asyncapi-3.0.0.schema.json from the AsyncAPI JSON schema.

The source is ``schemas/3.0.0.json`` of the npm package ``@asyncapi/specs`` (Apache-2.0):

    npm pack @asyncapi/specs@6.11.1 && tar xzf asyncapi-specs-6.11.1.tgz
    python scripts/vendor-asyncapi-schema.py package/schemas/3.0.0.json

Kept whole except the protocol bindings: only the WebSocket binding (``ws``) is checked; the
other protocols' binding schemas (most of the file's size) are dropped and their slots in the
bindings objects accept anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests/support/asyncapi/asyncapi-3.0.0.schema.json"
DEFS = "http://asyncapi.com/definitions/3.0.0/"


def trim(schema: dict) -> dict:
    definitions = schema["definitions"]
    for key in list(definitions):
        if key.startswith("http://asyncapi.com/bindings/") and "/websockets/" not in key:
            del definitions[key]
    for kind in ("channel", "operation", "message", "server"):
        properties = definitions[f"{DEFS}{kind}BindingsObject.json"]["properties"]
        for protocol in properties:
            if protocol != "ws":
                properties[protocol] = {}
    return schema


def main() -> None:
    source = json.loads(Path(sys.argv[1]).read_text())
    OUT.write_text(json.dumps(trim(source), ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
