{{/* Hook resources (migration and topic Jobs, and what they need) run before the release's own
resources exist: they get their own ServiceAccount and NetworkPolicy as hooks of a lower weight
(hooks.yaml). Weights: ServiceAccount -20, NetworkPolicy -15, topic ConfigMap -10, topic Job -5,
migration Jobs 0. Every hook is deleted once all hooks of its event succeeded; a failed Job is
kept for `kubectl logs` until the next attempt replaces it. */}}
{{- define "mercato.hook.deletePolicy" -}}
before-hook-creation,hook-succeeded
{{- end -}}

{{/* Name of the hooks' ServiceAccount and NetworkPolicy. */}}
{{- define "mercato.hook.name" -}}
{{- printf "%s-hooks" (include "mercato.fullname" .) -}}
{{- end -}}

{{/* The hook events of the migration Job of a component: (dict "root" $ "c" component). When the
chart renders the component's database itself, it does not exist at pre-install: before
upgrades only (the service migrates at its first start). */}}
{{- define "mercato.migration.events" -}}
{{- ternary "pre-upgrade" "pre-install,pre-upgrade" (eq (include "mercato.database.managed" (dict "root" .root "c" .c)) "true") -}}
{{- end -}}

{{/* Whether the chart renders the topic-creation Job (no Strimzi cluster to declare
KafkaTopics for): "true" or "". */}}
{{- define "mercato.topics.job" -}}
{{- if and .Values.kafka.topics.create (not (include "mercato.kafka.topicCluster" .)) -}}
true
{{- end -}}
{{- end -}}

{{/* The hook events any hook Job runs at, as a JSON list (pre-install, pre-upgrade); empty when
the chart renders no hook Job. */}}
{{- define "mercato.hook.events" -}}
{{- $root := . -}}
{{- $events := list -}}
{{- if include "mercato.topics.job" . -}}
{{- $events = list "pre-install" "pre-upgrade" -}}
{{- end -}}
{{- range $name := include "mercato.enabledComponents" . | fromJsonArray -}}
{{- $c := include "mercato.component" (dict "root" $root "name" $name) | fromYaml -}}
{{- if $c.migration.enabled -}}
{{- range splitList "," (include "mercato.migration.events" (dict "root" $root "c" $c)) -}}
{{- if not (has . $events) -}}
{{- $events = append $events . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $ordered := list -}}
{{- range list "pre-install" "pre-upgrade" -}}
{{- if has . $events -}}
{{- $ordered = append $ordered . -}}
{{- end -}}
{{- end -}}
{{- toJson $ordered -}}
{{- end -}}

{{/* The pod spec of a hook Job: the hooks' ServiceAccount without an API token, restricted
security, kept out of the mesh (a sidecar would keep the Job from completing; the Job talks
only to datastores). (dict "root" $ "c" component "name" containerName "command" list "args"
list "env" list "envFrom" list "volumes" list "mounts" list). */}}
{{- define "mercato.jobPod" -}}
metadata:
  labels:
    {{- include "mercato.selectorLabels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
    mercato.io/job: "true"
    {{- with include "mercato.mesh.podMetadata" (dict "root" .root "inject" false "part" "labels") | trim }}
    {{- . | nindent 4 }}
    {{- end }}
  {{- with include "mercato.mesh.podMetadata" (dict "root" .root "inject" false "part" "annotations") | trim }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "mercato.hook.name" .root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  securityContext:
    {{- include "mercato.podSecurityContext" (dict "c" .c) | nindent 4 }}
  {{- with include "mercato.imagePullSecrets" .root }}
  {{- . | nindent 2 }}
  {{- end }}
  containers:
    - name: {{ .name }}
      image: {{ include "mercato.image" (dict "root" .root "c" .c) }}
      imagePullPolicy: {{ .root.Values.image.pullPolicy }}
      {{- with .command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      args:
        {{- toYaml .args | nindent 8 }}
      {{- with .envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml .root.Values.migrations.resources | nindent 8 }}
      securityContext:
        {{- include "mercato.containerSecurityContext" (dict "c" .c) | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- with .mounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ .c.tmpSizeLimit }}
    {{- with .volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
