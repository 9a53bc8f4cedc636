"""Run one whole trace from Twisted code (README: "Use as a library")."""

from mtrd import PoolConfig, ProbePool
from mtrd.tracing.model import TraceRequest
from mtrd.tracing.resolution import TargetResolver
from mtrd.tracing.tracer import Tracer
from twisted.internet import defer, task
from twisted.names import client


async def main(reactor):
    pool = ProbePool(reactor, PoolConfig(size=2))
    await pool.start()
    try:
        tracer = Tracer(reactor, pool, TargetResolver(client.createResolver()))
        trace = await tracer.trace(TraceRequest("127.0.0.1", probes=2, interval=0.2), on_hop=print)
        print(trace.status, trace.destination_reached, len(trace.hops), "hops")
    finally:
        await pool.stop()


task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
