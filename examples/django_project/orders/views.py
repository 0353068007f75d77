import json

from django.db import IntegrityError, transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Order
from .tasks import confirm_order


@csrf_exempt  # a JSON API for the example; a real one authenticates its callers
@require_POST
def create_order(request):
    """``POST /orders/`` with ``{"customer": ..., "lines": [{"sku", "quantity",
    "price_cents"}, ...]}``: 201 with the new order, confirmed by a task once committed."""
    data = json.loads(request.body)
    try:
        with transaction.atomic():
            order = Order.objects.create(customer=data["customer"])
            # Sent when the transaction commits: the worker then sees the order and
            # every line below. If a line is refused, nothing is committed, nor sent.
            confirm_order.delay_on_commit(order.pk)
            for line in data["lines"]:
                order.lines.create(**line)
    except IntegrityError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(order.as_dict(), status=201)


@require_GET
def order_detail(request, pk):
    return JsonResponse(get_object_or_404(Order, pk=pk).as_dict())
