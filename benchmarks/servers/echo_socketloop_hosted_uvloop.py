"""Echo server: socketloop threads hosted on uvloop (``echo_socketloop_hosted_asyncio``)."""

import uvloop
from echo_socketloop_hosted_asyncio import main

uvloop.run(main())
