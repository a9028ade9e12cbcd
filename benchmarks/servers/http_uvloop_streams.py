"""HTTP/1.1 keep-alive "hello" responder: asyncio streams on uvloop."""

import uvloop
from http_asyncio_streams import main

uvloop.run(main())
