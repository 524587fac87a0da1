"""schemathesis hooks for Ferry's spec (loaded through SCHEMATHESIS_HOOKS by
tests/api/schemathesis.rs).

tus sends upload bytes as `application/offset+octet-stream` (the IETF draft as
`application/partial-upload`), media types schemathesis has no
serializer for; its bodies are raw bytes, sent as schemathesis sends `application/octet-stream`.
"""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
schemathesis.serializer.alias("application/partial-upload", "application/octet-stream")
