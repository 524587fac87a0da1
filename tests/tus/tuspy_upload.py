"""Uploads a file with tuspy (the tus client for Python), as a user's script would.

Usage: tuspy_upload.py TUS_ENDPOINT FILE CHUNK_BYTES

Retries each failed request (tuspy then asks the server for the offset with HEAD and resumes
from it); prints the upload's URL on its last line.
"""

import sys

from tusclient import client

endpoint, path, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
tus = client.TusClient(endpoint)
uploader = tus.uploader(
    path,
    chunk_size=chunk,
    metadata={"filename": "study.bin", "filetype": "application/octet-stream"},
    retries=200,
    retry_delay=0.2,
)
uploader.upload()
print(uploader.url, flush=True)
