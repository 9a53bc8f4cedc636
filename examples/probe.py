"""Send a few probes through the mtrd engine, from Twisted code (README: "Use as a library")."""

from mtrd import PoolConfig, ProbePool, ProbeRequest
from twisted.internet import defer, task


async def main(reactor):
    pool = ProbePool(reactor, PoolConfig(size=2))
    await pool.start()
    try:
        for ttl in (1, 2, 3):
            reply = await pool.probe(ProbeRequest("127.0.0.1", ttl=ttl, timeout=2))
            print(ttl, reply.kind, reply.address, reply.rtt_ms, "ms")
        udp = await pool.probe(
            ProbeRequest("127.0.0.1", protocol="udp", port=33434, local_port=40000, timeout=2)
        )
        print("udp", udp.kind, udp.address)
    finally:
        await pool.stop()


task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
