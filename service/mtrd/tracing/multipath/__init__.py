"""Multipath discovery: MDA and MDA-Lite over flows mtrd controls.

Augustin, Friedman and Teixeira, "Avoiding traceroute anomalies with Paris
traceroute" (IMC 2006), keep a flow's header fields fixed so that load balancers
send it one way, and give the Multipath Detection Algorithm's stopping rule and
its table of n_k (:mod:`.stopping`). Veitch, Augustin, Teixeira and Friedman,
"Failure control in multipath route tracing" (INFOCOM 2009), make MDA's
vertex-by-vertex rule with node control precise: the flows that count for a
vertex are those known to reach it (:mod:`.discovery`, full MDA). Vermeulen,
Strowes, Fourmaux and Friedman, "Multilevel MDA-Lite Paris Traceroute" (IMC
2018), stop per hop rather than per vertex where diamonds are uniform and
unmeshed, and test for meshing and uneven splits to fall back to full MDA
(:mod:`.discovery`, MDA-Lite).
"""
