"""HTTP/1.1 keep-alive "hello" responder: asyncio Protocol on uvloop."""

import uvloop
from http_asyncio_protocol import main

uvloop.run(main())
