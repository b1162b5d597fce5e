"""The task of the README's own job: one page visit, judged slow or not."""

from chalicelib.tasks import task


@task("page-visit", permanent=(KeyError,))  # a line without "page" fails at once
def page_visit(item, options):
    return {"page": item["page"], "slow": item["ms"] > options.get("slow_ms", 500)}
