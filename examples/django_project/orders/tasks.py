# The orders app's tasks. @shared_task, so that the app does not import the project's
# conveyor app; proj/celery.py finds this module with app.autodiscover_tasks().
import logging
import os

from django.db import transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from conveyor import shared_task

from .models import Order, Report

logger = logging.getLogger(__name__)


@shared_task(bind=True)
def confirm_order(self, order_id):
    """Price the order from its lines and mark it confirmed.

    The view that creates the order sends this with ``delay_on_commit``: by the time
    it runs, the order and all its lines are committed."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        lines = order.lines.aggregate(
            count=Count("id"), total=Sum(F("quantity") * F("price_cents"))
        )
        order.line_count = lines["count"]
        order.total_cents = lines["total"] or 0
        order.status = Order.Status.CONFIRMED
        order.confirmed_at = timezone.now()
        order.confirmed_by = f"{self.request.hostname} pid {os.getpid()}"
        order.save()
    logger.info(
        "order %s confirmed: %s lines, %s cents", order.pk, order.line_count, order.total_cents
    )
    return order.total_cents


@shared_task
def build_report():
    """Sum up the confirmed orders (sent by ``manage.py send_report``, e.g. nightly)."""
    confirmed = Order.objects.filter(status=Order.Status.CONFIRMED)
    report = Report.objects.create(
        confirmed_orders=confirmed.count(),
        revenue_cents=confirmed.aggregate(total=Sum("total_cents"))["total"] or 0,
    )
    logger.info(
        "report %s: %s orders, %s cents", report.pk, report.confirmed_orders, report.revenue_cents
    )
    return {
        "report": report.pk,
        "orders": report.confirmed_orders,
        "revenue_cents": report.revenue_cents,
    }
