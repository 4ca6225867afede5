"""An NBD server over any :class:`stowkit.corelib.blockstore.BlockStore`.

``protocol`` holds the wire constants and structs, ``cache`` the bounded
write-back object cache, ``export`` what one served device does, and
``server`` the asyncio network side (handshake, options, transmission).
"""
