from __future__ import annotations

from django.urls import path

from djproject import views

urlpatterns = [
    path("", views.index),
    path("hello/<str:name>/", views.hello),
    path("submit/", views.submit),
    path("countdown/", views.countdown),
]
