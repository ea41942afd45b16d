{{/* The pod spec of a hook Job: restricted security, no service account token, kept out of
the mesh (a sidecar would keep the Job from completing; the Job talks only to datastores).
(dict "root" $ "ctx" componentCtx "c" component "name" containerName "args" list "env" list
"volumes" list "mounts" list). */}}
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
  automountServiceAccountToken: false
  enableServiceLinks: false
  securityContext:
    {{- include "mercato.podSecurityContext" (dict "c" .c) | nindent 4 }}
  {{- with .root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
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
