from django.core.management.base import BaseCommand

from orders.tasks import build_report


class Command(BaseCommand):
    help = (
        "Queue the sales report. Run it from the platform's scheduler: a Kubernetes "
        "CronJob, Heroku Scheduler, cron (python manage.py send_report)."
    )

    def handle(self, *args, **options):
        result = build_report.delay()
        self.stdout.write(f"report queued: task {result.id}")
