"""
The report of C{benchmarks/run.py}: the figures against the targets of
docs/design.md section 10 as Markdown tables (what docs/benchmarks.md
records), and a plot of the latency distributions and the failover
timeline.

It reads the results a run wrote, nothing else: a run's C{results.json}
can be reported again without running anything.
"""

TARGETS = {
    "ratio": 0.40,
    # Post -> screen: same VM p50 at most 1.5 x the echo's p50 round trip
    # (one client, same run), p99 under 10 ms; across VMs p99 under 20 ms; at
    # 1,000/s offered, held (99% acknowledged, none dropped), p99 under 50 ms.
    "same_p50_echo": 1.5, "same_p99_ms": 10.0, "cross_p99_ms": 20.0,
    "held_fraction": 0.99, "loaded_p99_ms": 50.0,
    "client_failover_p50_ms": 100.0, "client_failover_p99_ms": 300.0,
    "replaced_p50_ms": 500.0, "replaced_p99_ms": 1000.0,
    "kb_per_session": 50.0,
}


def verdict(value, target, lower=True):
    """C{met} when C{value} is below C{target} (or, C{lower=False}, at least it)."""
    if value is None:
        return "n/a"
    return "met" if (value < target if lower else value >= target) else "**missed**"


def fmt(v, digits=1):
    """A figure for a table cell: C{-} for none, floats to C{digits} places."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.*f" % (digits, v)
    return str(v)


def markdown(results):
    """The Markdown of a run's results: the headline table, then one per phase."""
    m = results["meta"]
    cfg = results["config"]
    lines = [
        "Commit `%s`%s, %s mode, %s; %s, %d cores; load average %s before, %s after;"
        " Python %s, grpcio %s. Command: `%s` (%.0f s)."
        % (m["commit"][:12], " (with uncommitted changes)" if m["dirty"] else "", m["mode"],
           m["date"], m["cpu"], m["cores"], " ".join("%.2f" % x for x in m["load_before"]),
           " ".join("%.2f" % x for x in m.get("load_after", ())), m["python"], m["grpcio"],
           m["command"], m.get("seconds", 0)),
        "",
    ]
    first = "%dvm" % (cfg["vms"][0],)
    base = results.get(first, {})
    rows = base.get("throughput", [])
    headline = rows[-1] if rows else None
    if headline and headline["clients"] > 100:
        headline = [r for r in rows if r["clients"] == 100][0]
    lats = base.get("latency", [])
    fo = base.get("failover")
    mem = base.get("memory")
    lines += ["| figure (docs/design.md section 10) | measured | target | |", "|---|---|---|---|"]
    if headline:
        lines.append("| acked posts/s (copies >= 2), %d clients, vs bare grpc.aio echo | %s / %s"
                     " calls/s = **%.0f%%** | >= 40%% | %s |" % (
                         headline["clients"], fmt(headline["sns"]["posts_per_s"], 0),
                         fmt(headline["echo"]["calls_per_s"], 0), 100 * headline["ratio"],
                         verdict(headline["ratio"], TARGETS["ratio"], lower=False)))
    lines += latencyRows(lats, echoP50(rows))
    if fo:
        c = fo["client_post_ms"]
        lines.append("| client failover (master1 SIGKILL -> next post acked), p50 / p99"
                     " | %s / %s ms"
                     " (n=%d) | < 100 / < 300 ms | %s |" % (
                         fmt(c["p50"]), fmt(c["p99"]), c["n"],
                         "met" if verdict(c["p50"], 100) == "met"
                         and verdict(c["p99"], 300) == "met" else "**missed**"))
        s = fo["slave_replaced_ms"]
        lines.append("| dead slave replaced and registered, p50 / p99 | %s / %s ms (n=%d)"
                     " | < 500 / < 1000 ms | %s |" % (
                         fmt(s["p50"]), fmt(s["p99"]), s["n"],
                         "met" if verdict(s["p50"], 500) == "met"
                         and verdict(s["p99"], 1000) == "met" else "**missed**"))
    if mem:
        lines.append("| memory per live timeline session (%d on one master) | %s KB"
                     " | < 50 KB | %s |"
                     % (mem["sessions_on_master"], fmt(mem["kb_per_session"]),
                        verdict(mem["kb_per_session"], 50)))
    lines.append("")

    for key in ["%dvm" % (v,) for v in cfg["vms"]]:
        section = results.get(key, {})
        if section.get("throughput"):
            lines += ["Throughput, %s (closed loop, %s s per level; latency = post -> ack):" % (
                key.replace("vm", " VMs"), fmt(cfg["seconds"], 0)), "",
                "Posts go in two forms: *stream*, as in timeline mode (each a message on"
                " the client's session stream; the headline), and *unary*, as a script"
                " without a session (a Post call each).", "",
                "| clients | form | echo calls/s | echo p50 / p99 ms | posts/s (copies >= 2) |"
                " post p50 / p99 / max ms | ratio | acked with 1 copy | errors |"
                " CPU % (router, masters, slaves, load gen.) |"
                " server CPU ms per post / echo server's per call |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in section["throughput"]:
                e = r["echo"]
                for form, s, ratio in formsOf(r):
                    cpu = s["cpu_percent"]
                    masters = sum(v for k, v in cpu.items() if k.endswith("master"))
                    slaves = sum(v for k, v in cpu.items() if k.endswith("slave"))
                    row = ("| %d | %s | %s | %s / %s | %s | %s / %s / %s | %.0f%% | %d | %d"
                           " | %s, %s, %s, %s | %s / %s |")
                    lines.append(row % (
                        r["clients"], form, fmt(e["calls_per_s"], 0),
                        fmt(e["latency_ms"]["p50"], 2), fmt(e["latency_ms"]["p99"], 2),
                        fmt(s["posts_per_s"], 0), fmt(s["latency_ms"]["p50"], 2),
                        fmt(s["latency_ms"]["p99"], 2), fmt(s["latency_ms"]["max"], 1),
                        100 * (ratio or 0), s["acked_one_copy"], s["errors"],
                        cpu.get("router", "-"), masters, slaves,
                        cpu.get("load generators", "-"), fmt(cpuPerCall(s, "posts_per_s"), 2),
                        fmt(cpuPerCall(e, "calls_per_s"), 2)))
            lines.append("")
            lines += classLines(section["throughput"])
            lines += streamLines(section["throughput"])
        if section.get("latency"):
            lines += ["Post -> follower's screen, %s (poster on vm1; open loop for %s s):"
                      % (key.replace("vm", " VMs"), fmt(cfg["latencySeconds"], 0)), "",
                      "| offered/s | held (acked)/s | dropped | follower | p50 ms | p99 ms |"
                      " max ms | after accept p50 / p99 ms | received | post -> ack p50 / p99 ms"
                      " | echo paced at that rate, p50 / p99 ms |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for x in section["latency"]:
                paced = x.get("echo_paced_ms") or {}
                for k in ("same", "cross"):
                    row = ("| %d | %s | %d | %s (%s) | %s | %s | %s | %s / %s | %.0f%% | %s / %s"
                           " | %s / %s |")
                    lines.append(row % (
                        x["offered_per_s"], fmt(x["held_per_s"], 0), x["dropped"],
                        "same VM" if k == "same" else "other VM", x["follower_vms"][k],
                        fmt(x[k]["p50"]), fmt(x[k]["p99"]), fmt(x[k]["max"]),
                        fmt(x[k]["from_accept"]["p50"]), fmt(x[k]["from_accept"]["p99"]),
                        100 * x[k]["received_fraction"], fmt(x["ack_ms"]["p50"]),
                        fmt(x["ack_ms"]["p99"]), fmt(paced.get("p50"), 2),
                        fmt(paced.get("p99"), 2)))
            lines.append("")
            for x in section["latency"]:
                per = x.get("cpu_ms_per_post")
                if per:
                    lines.append("CPU ms per acknowledged post at %d/s offered: %s." % (
                        x["offered_per_s"], ", ".join("%s %s" % (k, fmt(v, 3))
                                                      for k, v in per.items())))
            lines.append("")
    if fo:
        lines += ["Failover (%d kills of each kind, 2 VMs):" % (len(fo["runs"]),), "",
                  "| from SIGKILL of ... to ... | p50 ms | p99 ms | max ms | failed |",
                  "|---|---|---|---|---|"]
        for key, what in (("client_post_ms", "the client's master1 -> its next post acknowledged"),
                          ("client_list_ms", "the client's master1 -> its next LIST answered"),
                          ("promoted_login_ms", "a master -> its promoted slave answers Login"),
                          ("pair_again_ms", "a master -> the VM has a new slave registered"),
                          ("slave_replaced_ms", "a slave -> its replacement registered")):
            s = fo[key]
            lines.append("| %s | %s | %s | %s | %d |" % (what, fmt(s["p50"]), fmt(s["p99"]),
                                                        fmt(s["max"]), s["failed"]))
        lines.append("")
    if mem:
        lines += ["Memory of vm1's master (VmRSS): %d KB idle, %d KB with %d live timeline"
                  " sessions (%s KB each), %d KB after they closed; the router counted %s"
                  " clients on it. Holding those sessions (heartbeats only, no posts) took"
                  " %d%% of a core on that master (%d%% with no session)."
                  % (mem["rss_idle_kb"], mem["rss_sessions_kb"],
                     mem["sessions_on_master"], fmt(mem["kb_per_session"]),
                     mem["rss_after_close_kb"], mem["router_reported_clients"],
                     mem["master_cpu_percent_with_sessions"], mem["master_cpu_percent_idle"]),
                  ""]
    prof = base.get("profile")
    for proc in (prof or {}).get("processes", ()):
        if not proc.get("top"):
            continue
        lines += ["py-spy on %s (pid %d) for %d s under %d posting clients, %s form (%s"
                  " posts/s while sampled); per thread, the share of its busy samples (busy"
                  " = not waiting in select or on a queue):" % (
                      proc["name"], proc["pid"], prof["seconds"], prof["clients"],
                      prof.get("form", "stream"), fmt(prof["posts_per_s_while_profiled"], 0)),
                  ""]
        for t in proc["top"][:3]:
            lines += ["Thread %s, busy %s%% of %d samples:" % (t["thread"], t["busy_percent"],
                                                              t["samples"]), "",
                      "| self | % | inclusive | % |", "|---|---|---|---|"]
            for (a, x), (b, y) in zip(t["self"], t["inclusive"]):
                lines.append("| `%s` | %s | `%s` | %s |" % (a, x, b, y))
            lines.append("")
    return "\n".join(lines)


def echoP50(rows):
    """
    The yardstick of the post -> screen target: the echo's p50 round trip
    with one client in the same run (None if the run had no such level).
    """
    for r in rows:
        if r["clients"] == 1:
            return r["echo"]["latency_ms"]["p50"]
    return None


def ratio(value, yardstick):
    """C{value} / C{yardstick} to one decimal, C{-} without both."""
    if value is None or not yardstick:
        return "-"
    return "%.1f" % (value / yardstick,)


def latencyRows(lats, echo):
    """
    The headline rows of the post -> screen runs against docs/design.md's
    targets: at the lowest rate (100/s), same VM p50 <= 1.5 x the echo's p50
    round trip and p99 < 10 ms, across VMs p99 < 20 ms; at a higher rate
    (1,000/s), the rate held (at least 99% of it acknowledged, none dropped)
    with p99 < 50 ms on both followers.  The p50 is shown as a ratio to both
    echoes: C{echo}, one caller back to back, and the one paced at the same
    rate (C{echo_paced_ms}), when the run has it.  The verdict is on the
    paced one: the posts come every 10 ms and every process on their path
    idles in between, as between the paced echo's calls, while back to
    back nothing ever idles (on this machine waking an idle process costs
    about as much as a back-to-back round trip).
    """
    lines = []
    low = min((x["offered_per_s"] for x in lats), default=None)
    for x in lats:
        same, cross = x["same"], x["cross"]
        if x["offered_per_s"] == low:
            paced = (x.get("echo_paced_ms") or {}).get("p50")
            yardstick = paced if paced is not None else echo
            p50 = TARGETS["same_p50_echo"] * yardstick if yardstick else None
            ok = (p50 is not None and same["p50"] is not None and same["p50"] <= p50
                  and verdict(same["p99"], TARGETS["same_p99_ms"]) == "met")
            lines.append("| post -> screen at %d/s offered (%s/s held), same VM, p50 / p99"
                         " | %s / %s ms; p50 = %s x the paced echo's (%s ms), %s x the"
                         " back-to-back echo's (%s ms) | p50 <= 1.5 x the echo's, judged on"
                         " the paced one (%s ms); p99 < 10 ms | %s |" % (
                             x["offered_per_s"], fmt(x["held_per_s"], 0), fmt(same["p50"]),
                             fmt(same["p99"]), ratio(same["p50"], paced), fmt(paced, 2),
                             ratio(same["p50"], echo), fmt(echo, 2), fmt(p50, 2),
                             "met" if ok else "**missed**"))
            lines.append("| post -> screen at %d/s offered, across VMs, p99 | %s ms | < 20 ms"
                         " | %s |" % (x["offered_per_s"], fmt(cross["p99"]),
                                      verdict(cross["p99"], TARGETS["cross_p99_ms"])))
        else:
            held = (x["acked"] >= TARGETS["held_fraction"] * x["offered_per_s"] * x["seconds"]
                    and not x["dropped"])
            worst = max((v for v in (same["p99"], cross["p99"]) if v is not None), default=None)
            lines.append("| post -> screen at %d/s offered: held, and p99 same / other VM"
                         " | %s/s held, %d dropped; %s / %s ms | held, p99 < 50 ms | %s |" % (
                             x["offered_per_s"], fmt(x["held_per_s"], 0), x["dropped"],
                             fmt(same["p99"]), fmt(cross["p99"]),
                             "met" if held and verdict(worst, TARGETS["loaded_p99_ms"]) == "met"
                             else "**missed**"))
    return lines


def streamLines(rows):
    """Each master's streams under each level: messages per acknowledged post, its CPU."""
    lines = ["Each master's streams (replication updates out, acks back, the slave's feed)"
             " and CPU per acknowledged post:", "",
             "| clients | form | master | acked | updates / message | acks / message |"
             " messages per post out + back | feed updates / call | master's CPU ms per post |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for form, s, _ in formsOf(r):
            for vm, t in sorted((s.get("streams") or {}).items()):
                lines.append("| %d | %s | %s | %d | %s | %s | %s + %s | %s | %s |" % (
                    r["clients"], form, vm, t["acknowledged"], fmt(t["updates_per_message"], 2),
                    fmt(t["acks_per_message"], 2), fmt(t["update_messages_per_post"], 2),
                    fmt(t["ack_messages_per_post"], 2), fmt(t["updates_per_feed_call"], 1),
                    fmt((s.get("cpu_ms_per_post") or {}).get(vm + " master"), 2)))
    return lines + [""]


def formsOf(row):
    """(form, result, ratio to the echo) of each posting form a throughput row measured."""
    out = [(row["sns"].get("form", "unary"), row["sns"], row["ratio"])]
    if "unary" in row:
        out.append(("unary", row["unary"], row.get("ratio_unary")))
    return out


_CLASSES = (("masters", "master"), ("slaves", "slave"), ("router", "router"),
            ("load generators", "load generators"))


def classLines(rows):
    """CPU ms per acknowledged post of each class of process, in each posting form."""
    lines = ["CPU ms (of one core) per acknowledged post, each class of process together:", "",
             "| clients | form | posts/s | " + " | ".join(c for c, _ in _CLASSES) + " |",
             "|---|---|---|" + "---|" * len(_CLASSES)]
    for r in rows:
        for form, s, _ in formsOf(r):
            per = s.get("cpu_ms_per_post") or {}
            lines.append("| %d | %s | %s | %s |" % (r["clients"], form, fmt(s["posts_per_s"], 0),
                         " | ".join(fmt(sum(v for k, v in per.items() if k.endswith(suffix)), 3)
                                    for _, suffix in _CLASSES)))
    return lines + [""]


def cpuPerCall(row, rate):
    """
    The servers' CPU (ms of one core) per post or call of a throughput row:
    its CPU % (load generators aside) over its rate; what the load of the
    machine changes least.
    """
    servers = sum(v for k, v in row["cpu_percent"].items() if k != "load generators")
    return 10.0 * servers / row[rate] if row.get(rate) else None


def plot(results, raw, path):
    """
    Draw C{plot.png} at C{path} from the results and the raw latencies;
    a sentence saying why not (matplotlib missing), or None.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib, or tox -e bench)"
    cfg = results["config"]
    first = "%dvm" % (cfg["vms"][0],)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0]
    n = 0
    for key, byRate in raw.items():
        if not key.startswith("latency"):
            continue
        for rate, lats in byRate.items():
            color = colors[n % len(colors)]
            n += 1
            for k, v in lats.items():
                s = sorted(v)
                if s:
                    ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], color=color,
                            ls="-" if k == "same" else "--",
                            label="%s, %d/s, %s" % (key.split("-")[1], rate,
                                                    "same VM" if k == "same" else "other VM"))
    ax.set_xscale("log")
    ax.set_xlabel("post -> follower's screen (ms)")
    ax.set_ylabel("fraction of posts")
    for x in (10, 20, 50):
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.set_title("post -> screen latency (10 / 20 / 50 ms targets dotted)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    for n, (clients, (echoLat, snsLat)) in enumerate(
            sorted(raw.get("throughput-" + first, {}).items())):
        for values, ls, what in ((snsLat, "-", "post -> ack"), (echoLat, "--", "echo")):
            s = sorted(values)
            if s:
                ax.plot(s, [(i + 1) / len(s) for i in range(len(s))],
                        color=colors[n % len(colors)], ls=ls,
                        label="%s, %d clients" % (what, clients))
    ax.set_xscale("log")
    ax.set_xlabel("call latency under closed-loop load (ms)")
    ax.set_title("acknowledged post (solid) vs bare grpc.aio echo (dashed), %s" % (first,))
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[2]
    fo = results.get(first, {}).get("failover")
    if fo:
        kinds = [("client_list_ms", "o", "client's next LIST answered"),
                 ("client_post_ms", "s", "client's next post acknowledged"),
                 ("promoted_login_ms", "^", "promoted slave answers Login"),
                 ("pair_again_ms", "D", "new slave registered (pair again)"),
                 ("slave_replaced_ms", "x", "after a slave SIGKILL: replacement registered")]
        for key, marker, label in kinds:
            points = [(r[key], i + 1) for i, r in enumerate(fo["runs"]) if r.get(key) is not None]
            if points:
                ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker,
                           label=label)
        for x in (100, 500, 1000):
            ax.axvline(x, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("ms after the SIGKILL (dotted: targets 100, 500, 1000 ms)")
        ax.set_ylabel("kill number (master kill, then a slave kill)")
        ax.set_title("failover timeline, %d rounds" % (len(fo["runs"]),))
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("snstwist %s, %s mode, %s, load %s" % (
        results["meta"]["commit"][:10], results["meta"]["mode"], results["meta"]["date"],
        " ".join("%.1f" % x for x in results["meta"]["load_before"])))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
