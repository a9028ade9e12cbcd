"""Echo server: asyncio Protocol on uvloop (the code of ``echo_asyncio_protocol``)."""

import uvloop
from echo_asyncio_protocol import main

uvloop.run(main())
