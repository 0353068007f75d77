from django.db import models


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new"
        CONFIRMED = "confirmed"

    customer = models.CharField(max_length=100)
    status = models.CharField(max_length=20, choices=Status, default=Status.NEW)
    created = models.DateTimeField(auto_now_add=True)
    # Set by the confirm_order task, from the lines it read:
    total_cents = models.PositiveIntegerField(null=True)
    line_count = models.PositiveIntegerField(null=True)
    confirmed_at = models.DateTimeField(null=True)
    confirmed_by = models.CharField(max_length=200, blank=True)  # the worker, and its process

    def as_dict(self):
        return {
            "id": self.pk,
            "customer": self.customer,
            "status": self.status,
            "total_cents": self.total_cents,
            "line_count": self.line_count,
            "confirmed_by": self.confirmed_by,
        }


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    sku = models.CharField(max_length=40)
    quantity = models.IntegerField()
    price_cents = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gte=1), name="quantity_positive")
        ]


class Report(models.Model):
    created = models.DateTimeField(auto_now_add=True)
    confirmed_orders = models.PositiveIntegerField()
    revenue_cents = models.PositiveIntegerField()
