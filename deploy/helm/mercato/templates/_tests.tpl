{{/* Name of the `helm test` Pods' ServiceAccount and NetworkPolicy (test-access.yaml). */}}
{{- define "mercato.tests.name" -}}
{{- printf "%s-tests" (include "mercato.fullname" .) -}}
{{- end -}}

{{/* Labels that select the `helm test` Pods of the release (NetworkPolicy peers). */}}
{{- define "mercato.tests.selectorLabels" -}}
{{ include "mercato.selectorLabels" . }}
mercato.io/test: "true"
{{- end -}}
