from django.urls import path

from . import views

urlpatterns = [
    path("", views.create_order),
    path("<int:pk>/", views.order_detail),
]
