{{/* The text of NOTES.txt (a named template, so the tests can render it without a cluster). */}}
{{- define "mercato.notes" -}}
Mercato {{ .Chart.AppVersion }} is installed as release {{ .Release.Name }} in namespace {{ .Release.Namespace }}.

Components: {{ include "mercato.enabledComponents" . | fromJsonArray | join ", " }}
Mesh: {{ .Values.mesh.provider }}{{ if .Values.tls.enabled }}; service TLS by cert-manager{{ end }}
{{- if .Values.ingress.enabled }}
Public API: http{{ if .Values.ingress.tls.enabled }}s{{ end }}://{{ .Values.ingress.host }}/ (OpenAPI at /openapi.json)
{{- else if .Values.httpRoute.enabled }}
Public API: through the HTTPRoute {{ include "mercato.fullname" . }}-gateway{{ with .Values.httpRoute.hostnames }} ({{ join ", " . }}){{ end }}
{{- else }}
Public API: kubectl -n {{ .Release.Namespace }} port-forward svc/{{ include "mercato.fullname" . }}-gateway 8080
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not (include "mercato.serviceMonitor.enabled" .)) }}

ServiceMonitors skipped: the cluster does not serve monitoring.coreos.com/v1/ServiceMonitor (Prometheus Operator CRDs). Install them and upgrade to get them, or set serviceMonitor.enabled=false.
{{- end }}
{{- if and .Values.prometheusRule.enabled (not (include "mercato.prometheusRule.enabled" .)) }}

PrometheusRule skipped: the cluster does not serve monitoring.coreos.com/v1/PrometheusRule (Prometheus Operator CRDs): no SLO alerts. Install them and upgrade to get it, or set prometheusRule.enabled=false.
{{- end }}

{{- if eq .Values.payments.provider "stripe" }}

Payments: Stripe. Register the webhook endpoint {{ trimSuffix "/" .Values.config.tokenIssuer }}/v1/payments/events in Stripe (events payment_intent.succeeded and payment_intent.payment_failed) and keep its signing secret in the Secret {{ include "mercato.secretName" (dict "root" . "name" .Values.payments.stripe.existingSecret) }}.
{{- end }}
{{- if and (eq .Values.payments.provider "dev") (not .Values.payments.development) }}

WARNING: payments.provider is `dev`: any caller holding the documented test token tok_test_ok can mark an order PAID, and no money moves. Do not take real orders with this release (set payments.development=true if it is for development or tests).
{{- end }}

Rollout: kubectl -n {{ .Release.Namespace }} get deploy -l app.kubernetes.io/instance={{ .Release.Name }}
{{- if .Values.tests.enabled }}
Check it: helm test {{ .Release.Name }} -n {{ .Release.Namespace }} (one Pod per component asks its health check)
{{- end }}
Secrets the pods read (created beforehand, see docs/deploy.md): kubectl -n {{ .Release.Namespace }} get pods -l app.kubernetes.io/instance={{ .Release.Name }} shows CreateContainerConfigError when one is missing.
{{- end -}}
