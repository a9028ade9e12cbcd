"""Echo server: asyncio streams on uvloop (the code of ``echo_asyncio_streams``)."""

import uvloop
from echo_asyncio_streams import main

uvloop.run(main())
