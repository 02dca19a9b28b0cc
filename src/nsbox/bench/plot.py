"""--plot: latency distributions per system and throughput by concurrency (matplotlib)."""

from __future__ import annotations


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    panels = [p for p in ("latency", "throughput") if p in results]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(7 * max(len(panels), 1), 5))
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, part in zip(axes, panels, strict=False):
        if part == "latency":
            variants = {k: v for k, v in results["latency"]["variants"].items()
                        if v.get("samples_ms")}
            ax.boxplot([v["samples_ms"] for v in variants.values()], showfliers=False)
            ax.set_xticks(range(1, len(variants) + 1), list(variants), rotation=45,
                          ha="right", fontsize=8)
            ax.set_ylabel("start to exit of /bin/true, ms")
            ax.set_title("latency (interleaved, one run)")
        else:
            for label, points in results["throughput"]["points"].items():
                levels = [int(c) for c in points]
                ax.plot(levels, [p["nsbox"]["per_s"] for p in points.values()], "o-",
                        label=f"nsbox, threads [{label}]")
                ax.plot(levels, [p["supervisor"]["per_s"] for p in points.values()], "^-",
                        label=f"nsbox, trio supervisor [{label}]")
                floor = [p["floor"]["per_s"] if p["floor"] else None for p in points.values()]
                if all(floor):
                    ax.plot(levels, floor, "s--", label=f"C floor [{label}]")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_ylabel("sandboxes per second")
            ax.set_title("throughput")
            ax.legend(fontsize=8)
    machine = report.get("machine", {})
    fig.suptitle(f"nsbox bench: {machine.get('kernel', '')}, "
                 f"{machine.get('cpus_usable', '?')} CPUs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
